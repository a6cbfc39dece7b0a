"""twistd plugin: ``twistd -n simplepush [--config FILE]``."""

from twisted.application.service import ServiceMaker

simplepush = ServiceMaker(
    "pushtwisted",
    "pushtwisted.tap",
    "A SimplePush server: WebSocket user agents, HTTP notification endpoints",
    "simplepush",
)
