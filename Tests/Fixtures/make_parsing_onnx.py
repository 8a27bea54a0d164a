"""Writes a tiny face-parsing ONNX model with the BiSeNet output layout ([1, 19, H, W] logits)
whose answer is known: class 1 (skin) inside a centred disk of radius 0.3·H, class 0 elsewhere,
whatever the input; with `hair`, class 17 (hair) also covers the upper half of the ring between
radius 0.3·H and 0.45·H (a cap over the face). A convolution still reads the input so the real graph path (resize,
normalise, NCHW, forward, argmax) runs end to end.

usage: make_parsing_onnx.py OUT.onnx [SIZE] [hair]
"""
import sys

import torch


class KnownParser(torch.nn.Module):
    def __init__(self, size: int, hair: bool = False):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 19, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight, std=1e-3)
        torch.nn.init.zeros_(self.conv.bias)
        yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
        c = (size - 1) / 2
        disk = (((yy - c) ** 2 + (xx - c) ** 2) <= (0.3 * size) ** 2).float()
        prior = torch.zeros(1, 19, size, size)
        cap = torch.zeros_like(disk)
        if hair:
            r2 = (yy - c) ** 2 + (xx - c) ** 2
            cap = ((r2 <= (0.45 * size) ** 2) & (yy < c)).float() * (1 - disk)
        prior[0, 0] = 5.0 * (1 - disk - cap)
        prior[0, 1] = 5.0 * disk
        prior[0, 17] = 5.0 * cap
        self.register_buffer("prior", prior)

    def forward(self, x):
        return self.conv(x) + self.prior


def main() -> None:
    out = sys.argv[1]
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    model = KnownParser(size, hair=len(sys.argv) > 3 and sys.argv[3] == "hair").eval()
    torch.onnx.export(model, torch.zeros(1, 3, size, size), out, input_names=["input"], output_names=["logits"],
                      opset_version=11, dynamo=False)


if __name__ == "__main__":
    main()
