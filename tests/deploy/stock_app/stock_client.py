"""A ClientApp written against plain Flower and torch, in the pattern of Flower's PyTorch quickstart.

It knows nothing of fedhive: it receives an ArrayRecord, trains the model (the same architecture as the server's
task: a linear classifier of 60 features into 10 classes) on its own local data for a few steps, and replies with
an ArrayRecord and a MetricRecord holding ``train_loss`` and ``num-examples``. It has no evaluate or query handler.
"""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def load_data(partition_id: int, n: int = 200):
    g = torch.Generator().manual_seed(1000 + partition_id)
    x = torch.randn(n, 60, generator=g)
    teacher = torch.randn(60, 10, generator=torch.Generator().manual_seed(7))
    return x, (x @ teacher).argmax(dim=1)


@app.train()
def train(msg: Message, context: Context) -> Message:
    model = torch.nn.Linear(60, 10)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    x, y = load_data(int(context.node_config["partition-id"]))
    lr = float(msg.content["config"].get("lr", 0.1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for i in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i * 32:(i + 1) * 32]), y[i * 32:(i + 1) * 32])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": sum(losses) / len(losses), "num-examples": len(x)})})
    return Message(content=content, reply_to=msg)
