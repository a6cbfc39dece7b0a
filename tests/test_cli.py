"""Tests for ``pushtwisted.cli``: options, the check report, the shipped sample."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import tomllib
from pathlib import Path

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

import pushtwisted
from pushtwisted import cli, tap
from pushtwisted.config import Config, CryptoConfig
from pushtwisted.config_toml import config_document
from pushtwisted.errors import ConfigError
from pushtwisted.tokens import generate_key

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "config.sample.toml"
PACKAGED_SAMPLE = ROOT / "pushtwisted" / "config.sample.toml"


def twistd_arguments(*argv: str) -> list[str]:
    """Parse ``argv`` as ``python -m pushtwisted`` does; return the twistd command line."""
    options = cli.MainOptions()
    options.parseOptions(list(argv))
    return options.twistd_arguments()


class MainOptionsTests(SynchronousTestCase):
    """``python -m pushtwisted`` turns its options into a twistd command line."""

    RUN = ["--nodaemon", "--pidfile="]

    def test_run_defaults(self) -> None:
        """No option: run ``simplepush`` in the foreground with twistd's own logger."""
        self.assertEqual(twistd_arguments(), [*self.RUN, "simplepush"])

    def test_config(self) -> None:
        """``--config`` and ``-c`` go to ``simplepush``."""
        expected = [*self.RUN, "simplepush", "--config", "push.toml"]
        self.assertEqual(twistd_arguments("--config", "push.toml"), expected)
        self.assertEqual(twistd_arguments("-c", "push.toml"), expected)

    def test_check_command(self) -> None:
        """``check [--config FILE]`` and ``--check-config`` run ``simplepush --check-config``."""
        expected = [*self.RUN, "simplepush", "--config", "p.toml", "--check-config"]
        self.assertEqual(twistd_arguments("check", "--config", "p.toml"), expected)
        self.assertEqual(twistd_arguments("--config", "p.toml", "check"), expected)
        self.assertEqual(twistd_arguments("--check-config", "-c", "p.toml"), expected)
        self.assertEqual(twistd_arguments("check"), [*self.RUN, "simplepush", "--check-config"])

    def test_logger(self) -> None:
        """``--logger NAME`` is twistd's ``--logger``."""
        self.assertEqual(
            twistd_arguments("--logger", "my.observer"),
            [*self.RUN, "--logger=my.observer", "simplepush"],
        )

    def test_log_format(self) -> None:
        """``--log-format json|text`` names pushtwisted's observers."""
        self.assertEqual(
            twistd_arguments("--log-format", "json"),
            [*self.RUN, "--logger=pushtwisted.logs.json_observer", "simplepush"],
        )
        self.assertEqual(
            twistd_arguments("--log-format=text"),
            [*self.RUN, "--logger=pushtwisted.logs.text_observer", "simplepush"],
        )

    def test_bad_log_format(self) -> None:
        """An unknown format, or both ``--logger`` and ``--log-format``, is a usage error."""
        self.assertRaises(usage.UsageError, twistd_arguments, "--log-format", "xml")
        self.assertRaises(
            usage.UsageError, twistd_arguments, "--log-format", "json", "--logger", "x.y"
        )

    def test_sample_config_takes_no_argument(self) -> None:
        """``sample-config`` refuses arguments."""
        self.assertRaises(usage.UsageError, twistd_arguments, "sample-config", "extra")

    def test_help_names_the_program(self) -> None:
        """The help starts with ``Usage: python -m pushtwisted`` and lists the commands."""
        text = str(cli.MainOptions())
        self.assertTrue(text.startswith("Usage: python -m pushtwisted [options]"), text)
        self.assertNotIn("twistd [options]", text)
        for fragment in ("check", "sample-config", "--log-format", "SIMPLEPUSH_<SECTION>_<KEY>"):
            self.assertIn(fragment, text)


class TwistdOptionsTests(SynchronousTestCase):
    """``twistd simplepush`` has ``--check-config`` and pushtwisted's ``--version``."""

    def test_check_config_flag(self) -> None:
        """``--check-config`` is off by default and on when given."""
        options = tap.Options()
        options.parseOptions([])
        self.assertFalse(options["check-config"])
        options = tap.Options()
        options.parseOptions(["--check-config", "-c", "p.toml"])
        self.assertTrue(options["check-config"])
        self.assertEqual(options["config"], "p.toml")

    def test_version_is_pushtwisted_s(self) -> None:
        """``--version`` is described as pushtwisted's, not Twisted's."""
        text = str(tap.Options())
        self.assertRegex(text, r"--version +Print pushtwisted's version and exit\.")


class VersionTests(SynchronousTestCase):
    """``--version`` prints the installed distribution's version."""

    def test_version_line(self) -> None:
        """It is ``pushtwisted <version>``, and that version is the installed one."""
        self.assertEqual(cli.version_line(), f"pushtwisted {pushtwisted.__version__}")
        self.assertEqual(pushtwisted.__version__, importlib.metadata.version("pushtwisted"))


class CheckReportTests(SynchronousTestCase):
    """``check_report`` names the sources, then the whole configuration as TOML."""

    def test_report(self) -> None:
        """The report is valid TOML holding the effective configuration, secrets masked."""
        key = generate_key()
        config = dataclasses.replace(Config(), crypto=CryptoConfig(keys=[key]))
        environ = {"SIMPLEPUSH_CRYPTO_KEYS": key, "simplepush_client_max_channels": "3", "X": "1"}
        report = cli.check_report(config, "/etc/push.toml", environ)
        self.assertNotIn(key, report)
        self.assertEqual(tomllib.loads(report), config_document(config))
        lines = report.splitlines()
        self.assertEqual(
            lines[0], f"# pushtwisted {pushtwisted.__version__}: the configuration is valid."
        )
        self.assertEqual(
            lines[1],
            "# Effective configuration: built-in defaults, then /etc/push.toml, then"
            " SIMPLEPUSH_CRYPTO_KEYS, simplepush_client_max_channels; secrets are masked.",
        )

    def test_report_defaults_only(self) -> None:
        """Without a file or variables, only the defaults are named."""
        report = cli.check_report(Config(), None, {})
        self.assertIn("# Effective configuration: built-in defaults; secrets", report)

    def test_error_exit(self) -> None:
        """Every problem becomes one ``error:`` line of the exit message (status 1)."""
        exit_ = cli.error_exit(ConfigError("a.b: bad", "SIMPLEPUSH_X: unknown"))
        self.assertEqual(exit_.code, "error: a.b: bad\nerror: SIMPLEPUSH_X: unknown")


class SampleConfigTests(SynchronousTestCase):
    """The sample configuration is shipped inside the package, the same as the top one."""

    def test_packaged_copy_is_identical(self) -> None:
        """``pushtwisted/config.sample.toml`` reads byte for byte as ``config.sample.toml``
        (in the source tree it is a symbolic link to the top-level file; the build copies
        the file's content into the package)."""
        self.assertEqual(PACKAGED_SAMPLE.read_bytes(), SAMPLE.read_bytes())

    def test_sample_config_text(self) -> None:
        """``sample_config()`` returns the sample's text."""
        self.assertEqual(cli.sample_config(), SAMPLE.read_text(encoding="utf-8"))

    def test_installed_distribution_ships_it(self) -> None:
        """The installed distribution lists ``pushtwisted/config.sample.toml``."""
        files = importlib.metadata.files("pushtwisted") or []
        self.assertIn("pushtwisted/config.sample.toml", [f.as_posix() for f in files])
