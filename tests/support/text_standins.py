"""Stand-ins for a text-conditional model on 2-D points: a byte-level trainable text encoder and a net with
cross-attention (shared by the text and conditioning tests; no test module imports another)."""

import torch
from torch import nn

from ddpm.nets.cross_attention import CrossAttention, pooled_context, split_condition

L, D = 6, 8  # tokens per prompt, embedding width


class CharEncoder(nn.Module):
    """Stand-in text encoder: a learned vector per byte, a start token, padding to L; trainable."""

    trainable, dim, max_length = True, D, L

    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(257, D)  # 256 bytes + the start token

    def forward(self, prompts):
        ids = torch.zeros(len(prompts), L, dtype=torch.long)
        mask = torch.zeros(len(prompts), L, dtype=torch.bool)
        for i, p in enumerate(prompts):
            tokens = [256, *p.encode()[: L - 1]]
            ids[i, : len(tokens)], mask[i, : len(tokens)] = torch.tensor(tokens), True
        device = self.table.weight.device
        return self.table(ids.to(device)), mask.to(device)


class TextNet(nn.Module):
    """Stand-in text-conditional net on 2-D points: cross-attention of x's one token over the prompt."""

    num_classes = None

    def __init__(self):
        super().__init__()
        self.context_dim = D
        self.inp, self.t = nn.Linear(2, 16), nn.Embedding(1000, 16)
        self.cross, self.pool, self.out = CrossAttention(16, D, 2), nn.Linear(D, 16), nn.Linear(16, 2)
        nn.init.normal_(self.cross.proj.weight, std=0.3)

    def forward(self, x, t, cond):
        _, text = split_condition(cond)
        emb, mask = text
        h = self.inp(x) + self.t(t) + self.pool(pooled_context(emb, mask))  # (B, 16)
        h = h + self.cross(h[:, None], emb, mask)[:, 0]
        return 0.9 * torch.tanh(self.out(torch.tanh(h)))  # (B, 2)
