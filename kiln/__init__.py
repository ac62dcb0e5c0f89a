"""Kiln's end-to-end drivers (the demo); the stages themselves live in training/, export/, serving/.

gRPC's fork support is off in the processes that drive Kiln (the demo, the bench, the tests: ``bench``
and ``tests/conftest.py`` import this package first), unless the environment says otherwise. They talk
to servers over gRPC and start their children through ``kiln.processes.child_options``, whose
``preexec_fn`` makes Python fork (not vfork): gRPC's fork handlers then restarted its event engine's
poller in the child, and the child's closing of inherited descriptors before ``exec`` took its epoll
descriptor away; the child died by SIGABRT ("Epoll1Poller ... epoll_wait error: Bad file descriptor")
before it ran, ~5 % of the starts while a channel was busy, seen as a gateway killed before ready.
Nothing of Kiln forks a process that goes on using gRPC, which is what that support is for.
"""

import os as _os

_os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
