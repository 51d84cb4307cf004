"""The quickstart ServerApp with fedhive's FedCompass: the same app as server_app.py but for the import and the
strategy's own keywords. A "round" is a global model version; ``max_time`` bounds the run in seconds."""

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedhive.flower import FedCompass
from quickstart.task import Net, central_evaluate

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    strategy = FedCompass(min_available_nodes=3, max_time=float(context.run_config["max-time"]))
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(Net().state_dict()),
                            num_rounds=int(context.run_config["num-server-rounds"]),
                            train_config=ConfigRecord({"lr": float(context.run_config["lr"])}),
                            evaluate_fn=central_evaluate)
    torch.save(result.arrays.to_torch_state_dict(), "final_model.pt")
