"""ClientApp of tests/client/test_runner.py: ``mode`` "raise" raises, "exit" calls sys.exit, anything else answers with this process's
pid and this module's VERSION (the test ships a second copy of the app with another VERSION)."""

import os
import sys

from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

VERSION = 1
app = ClientApp()


@app.train()
def train(msg: Message, context) -> Message:
    if msg.content["config"]["mode"] == "raise":
        raise ValueError("asked to raise")
    if msg.content["config"]["mode"] == "exit":
        sys.exit(3)
    return Message(RecordDict({"metrics": MetricRecord({"pid": os.getpid(), "version": VERSION})}), reply_to=msg)
