"""Runs LocalStack (as `python -m localstack.runtime.main` does) with its gateway on loopback only.

`cargo xtask services up` starts LocalStack through this file. LocalStack's default (Twisted) gateway
ignores the host in GATEWAY_LISTEN for IPv4 and listens on every interface (`# TODO: interface = host?`
in localstack/runtime/server/twisted.py, localstack-core 2026.3.0): a KMS with dummy credentials would
be reachable from the network. Here, listening TCP endpoints created without an interface get 127.0.0.1.
If a LocalStack version stops using `endpoints.TCP4ServerEndpoint`, this does nothing and the gateway
listens wherever that version puts it.
"""

import runpy

from twisted.internet import endpoints


class _LoopbackTCP4ServerEndpoint(endpoints.TCP4ServerEndpoint):
    def __init__(self, reactor, port, backlog=50, interface=""):
        super().__init__(reactor, port, backlog, interface or "127.0.0.1")


endpoints.TCP4ServerEndpoint = _LoopbackTCP4ServerEndpoint
runpy.run_module("localstack.runtime.main", run_name="__main__", alter_sys=True)
