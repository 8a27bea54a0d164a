"""Writes a tiny FairFace-layout ONNX classifier (input [1,3,224,224], output [1,18] logits:
7 race, 2 gender, 9 age bins) whose answer is known whatever the input: a small conv reads the
image (so the real preprocessing and forward path run) and a fixed bias sets the logits.
--confident: East Asian (race 3), female (gender 1), age bin 30-39 (index 4), each dominant.
--flat: all logits equal, so no group reaches any confidence threshold.

usage: make_fairface_onnx.py OUT.onnx (--confident|--flat)
"""
import sys

import torch


class KnownClassifier(torch.nn.Module):
    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 7, stride=8)
        torch.nn.init.normal_(self.conv.weight, std=1e-4)
        self.head = torch.nn.Linear(4, 18)
        torch.nn.init.normal_(self.head.weight, std=1e-4)
        with torch.no_grad():
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def main() -> None:
    out, mode = sys.argv[1], sys.argv[2]
    bias = torch.zeros(18)
    if mode == "--confident":
        bias[3] = 8.0       # East Asian
        bias[7 + 1] = 8.0   # female
        bias[9 + 4] = 8.0   # 30-39
    torch.onnx.export(KnownClassifier(bias).eval(), torch.zeros(1, 3, 224, 224), out, input_names=["input"],
                      output_names=["logits"], opset_version=11, dynamo=False)


if __name__ == "__main__":
    main()
