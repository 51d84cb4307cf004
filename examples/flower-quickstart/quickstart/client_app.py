"""A stock Flower ClientApp (no fedhive import): it works unchanged with Flower's FedAvg and fedhive's strategies.

The one thing it reads that fedhive may set: the number of local steps, ``config["local-steps"]`` (FedCompass chooses
it per client from the client's speed); without it, the run config's ``local-steps``.
"""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from quickstart.task import Net, load_data, test, train

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    return int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])


@app.train()
def train_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(*_partition(context))
    config = msg.content["config"]
    steps = int(config.get("local-steps", context.run_config["local-steps"]))
    loss = train(model, x, y, steps, float(config["lr"]))
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(x)})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_fn(msg: Message, context: Context) -> Message:
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(*_partition(context))
    loss, acc = test(model, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(x)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
