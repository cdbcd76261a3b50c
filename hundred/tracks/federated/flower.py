"""Flower in one process: a :class:`flwr.serverapp.Grid` that delivers each message to an
in-process :class:`flwr.clientapp.ClientApp` with its node's own :class:`flwr.app.Context`.

Flower's strategy drives everything a federated round is: ``Strategy.start`` samples the
nodes (``configure_train``, seeded through Python's ``random``), sends them the global
``ArrayRecord``, and averages the replies weighted by ``num-examples`` (``aggregate_train``).
What Flower's own simulation runtime adds — one Ray actor per
virtual client (``federated.engine=ray``) — is process isolation and parallelism, at a cost
a 2-core CPU cannot afford in tests (Ray's start-up alone took ~40 s here); this grid runs
the same ServerApp-side strategy and the same ClientApp sequentially instead, so a run is
deterministic and needs no extra dependency. Each node's ``Context.state`` persists across
rounds, which is where a client keeps what it never sends (FedLoGe's local heads).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Iterable, Iterator

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

RUN_ID = 1
FIRST_NODE = 1000  # node ids of the clients: FIRST_NODE + client index (1 is the server)


class LocalGrid(Grid):
    """One node per client (node id ``FIRST_NODE + client``), each answered by ``app``."""

    def __init__(self, app: ClientApp, clients: int) -> None:
        self.app = app
        self.contexts = {FIRST_NODE + client: Context(
            run_id=RUN_ID, node_id=FIRST_NODE + client, node_config={"partition-id": client},
            state=RecordDict(), run_config={}) for client in range(clients)}
        self._run = Run.create_empty(RUN_ID)
        self._replies: dict[str, Message] = {}
        self._ids = itertools.count()

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now: the node's ClientApp answers it with the node's context."""
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            message.metadata.__dict__["_message_id"] = message_id
            reply = self.app(message, self.contexts[message.metadata.dst_node_id])
            self._replies[message_id] = reply
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextlib.contextmanager
def server_identity(quiet: bool = True) -> Iterator[None]:
    """Flower's messages take their run and source node from ``TaskIdentity`` (set by the
    SuperLink in a deployment): set it to the server's for the block, and quieten Flower's
    per-round INFO log (and its warning that federated evaluation is off: this track
    evaluates on the server) when ``quiet``; both are restored afterwards."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    logger = logging.getLogger("flwr")
    level = logger.level
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, SUPERLINK_NODE_ID
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved
        logger.setLevel(level)
