"""Visual-token compressors: patch features [B, n_levels, P, D] -> V tokens [B, V, out_dim].

The paper's whole question is how few visual tokens V an LLM needs, so the compressor is the knob. Every
compressor here maps a grid_side x grid_side patch grid to V tokens; the grid-based ones need V = v*v with v
dividing grid_side, so each output token owns an s x s region of patches, s = grid_side / v.

    identity      all P patches (V = P)
    avgpool       average each s x s region (no parameters)
    pixelshuffle  stack each s x s region along channels, then a linear map (nanoVLM / Idefics3)
    perceiver     V learned queries cross-attend to all patches (resampler / Q-Former family)
    tokenpacker   bilinear point queries attend to their own region of multi-level features (arXiv 2407.02392)
    quecc         like tokenpacker, but the queries are conditioned on the user's question (the paper's QueCC)
    random        V of the P patches drawn at random (baseline: arXiv 2502.11501); any V in 1..P
    downsample    the image itself resized so the frozen tower yields V = v*v patches (baseline: arXiv
                  2510.07143); acts before the tower (the VLM resizes the pixels), any v in 1..grid_side
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_vlm.errors import UserError

LN_EPS = 1e-6  # the references' LayerNorm eps (QueCC, TokenPacker)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _default_heads(dim: int, preferred: int = 8) -> int:
    """The largest head count <= preferred that divides dim (8 as in QueCC when it fits)."""
    return max(h for h in range(1, preferred + 1) if dim % h == 0)


class Compressor(nn.Module):
    """Base class. Subclasses set `multi_level` / `needs_query` and implement `compress`."""

    multi_level: bool = False  # uses every level in `features`, not only the main (last) one
    needs_query: bool = False  # needs the question embedding `query` [B, Dq]
    has_params: bool = True  # False: out_dim is fixed to in_dim
    resizes_image: bool = False  # True: the tower sees the image at side*patch pixels, not its own resolution

    def __init__(self, *, in_dim: int, grid_side: int, num_levels: int, visual_tokens: int,
                 query_dim: int | None = None, out_dim: int | None = None):
        super().__init__()
        self.in_dim, self.grid_side, self.num_levels = in_dim, grid_side, num_levels
        self.visual_tokens, self.query_dim = visual_tokens, query_dim
        self.out_dim = in_dim if out_dim is None else out_dim
        self.side = math.isqrt(visual_tokens)  # output grid side (grid compressors)
        self.scale = grid_side // self.side if self.side else 0  # s: patches per output token on a side

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        """V values this compressor accepts for a grid_side x grid_side grid: squares of divisors."""
        return [d * d for d in _divisors(grid_side)]

    @classmethod
    def accepts(cls, visual_tokens: int, grid_side: int) -> bool:
        return visual_tokens in cls.valid_visual_tokens(grid_side)

    @classmethod
    def describe_valid(cls, grid_side: int) -> str:
        """The valid V, as the one-line error message shows them."""
        return ", ".join(map(str, cls.valid_visual_tokens(grid_side)))

    @property
    def input_patches(self) -> int:
        """Patches per level this compressor is fed (the tower's full grid unless it resizes the image)."""
        return self.grid_side**2

    def analytic_flops(self) -> float:
        """FLOPs per image of the compressor alone (2 per multiply-add of its matmuls; no parameters: 0)."""
        return 0.0

    def forward(self, features: torch.Tensor, query: torch.Tensor | None = None, return_attention: bool = False):
        if features.dim() != 4 or features.shape[2] != self.input_patches or features.shape[3] != self.in_dim:
            raise ValueError(
                f"{type(self).__name__} expects features [B, n_levels, {self.input_patches}, {self.in_dim}], "
                f"got {list(features.shape)}"
            )
        if self.multi_level and features.shape[1] != self.num_levels:
            raise ValueError(f"{type(self).__name__} was built for {self.num_levels} levels, got {features.shape[1]}")
        if self.needs_query and query is None:
            raise ValueError(f"{type(self).__name__} needs a question embedding `query` [B, {self.query_dim}]")
        tokens, attn = self.compress(features, query)
        return (tokens, attn) if return_attention else tokens

    def compress(self, features: torch.Tensor, query: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    # helpers ------------------------------------------------------------------------------------------
    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        """[B, P, C] -> [B, C, side, side] for the 2-D ops."""
        return x.transpose(1, 2).unflatten(2, (self.grid_side, self.grid_side))


class Identity(Compressor):
    """All patches of the main level (V = P): the uncompressed baseline."""

    has_params = False

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        return [grid_side * grid_side]

    def compress(self, features, query):
        return features[:, -1], None


class AvgPool(Compressor):
    """Average each s x s region of the main level: V = (grid_side / s)**2. No parameters."""

    has_params = False

    def compress(self, features, query):
        pooled = F.adaptive_avg_pool2d(self._grid(features[:, -1]), self.side)  # [B, D, v, v]
        return pooled.flatten(2).transpose(1, 2), None


class PixelShuffle(Compressor):
    """Space-to-depth: each s x s region becomes one token of width s*s*D, then a linear map to out_dim."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = nn.Linear(self.scale**2 * self.in_dim, self.out_dim)

    def compress(self, features, query):
        x = self._grid(features[:, -1])  # [B, D, side, side]
        x = F.pixel_unshuffle(x, self.scale)  # [B, D*s*s, v, v]
        return self.proj(x.flatten(2).transpose(1, 2)), None

    def analytic_flops(self):
        return 2.0 * self.proj.weight.numel() * self.visual_tokens


class Perceiver(Compressor):
    """V learned latent queries cross-attend to all main-level patches (`depth` blocks of attention + MLP)."""

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        # Any positive V works; this lists 1..P, the range that actually compresses.
        return list(range(1, grid_side * grid_side + 1))

    @classmethod
    def accepts(cls, visual_tokens: int, grid_side: int) -> bool:
        return visual_tokens >= 1

    @classmethod
    def describe_valid(cls, grid_side: int) -> str:
        return "any positive integer"

    def analytic_flops(self):
        V, P, dim, d_in = self.visual_tokens, self.input_patches, self.out_dim, self.in_dim
        # per block: q and out projections (V tokens), k and v projections (P patches), scores and A V, MLP 4x
        per_block = 2 * dim * dim * V + 2 * d_in * dim * P + 2 * V * P * dim + 8 * dim * dim * V
        return 2.0 * per_block * len(self.blocks)

    def __init__(self, *, depth: int = 1, num_heads: int | None = None, **kw):
        super().__init__(**kw)
        dim = self.out_dim
        if depth < 1:
            raise UserError(f"compressor option depth={depth} must be a positive integer")
        heads = _check_heads(num_heads, dim)
        self.latents = nn.Parameter(torch.randn(self.visual_tokens, dim) * 0.02)
        self.kv_norm = nn.LayerNorm(self.in_dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(dict(
                q_norm=nn.LayerNorm(dim),
                attn=nn.MultiheadAttention(dim, heads, kdim=self.in_dim, vdim=self.in_dim, batch_first=True),
                mlp_norm=nn.LayerNorm(dim),
                mlp=_mlp(dim, 4 * dim, dim),
            ))
            for _ in range(depth)
        )
        self.out_norm = nn.LayerNorm(dim)

    def compress(self, features, query):
        kv = self.kv_norm(features[:, -1])
        x = self.latents.expand(kv.shape[0], -1, -1)
        for blk in self.blocks:
            h, attn = blk["attn"](blk["q_norm"](x), kv, kv, need_weights=True, average_attn_weights=True)
            x = x + h
            x = x + blk["mlp"](blk["mlp_norm"](x))
        return self.out_norm(x), attn  # attn of the last block: [B, V, P], averaged over heads


# --- region (point-to-region) cross-attention, shared by tokenpacker and quecc -------------------------------
# Both follow their reference code (locuslab/llava-token-compression quecc.py; CircleRadon/TokenPacker's
# projector): separate key and value branches (MLP + LayerNorm, eps 1e-6) over the multi-level features, one
# nn.MultiheadAttention, and the attention output alone as the token. The query only weights its region's values.


def _branch(d_in: int, dim: int) -> nn.Sequential:
    """Linear - GELU - Linear - LayerNorm(eps 1e-6): the references' query/key/value branches."""
    return nn.Sequential(*_mlp(d_in, dim, dim), nn.LayerNorm(dim, eps=LN_EPS))


class RegionCrossAttention(nn.Module):
    """Query v attends only to the s x s patches of its own region (one query per region).

    Keys and values: the multi-level features (levels concatenated on channels), each through its own branch.
    Implemented by gathering each region into its own short sequence: [B*V, s*s, dim].
    """

    def __init__(self, *, grid_side: int, scale: int, kv_dim: int, dim: int, num_heads: int):
        super().__init__()
        self.dim = dim
        self.k_branch, self.v_branch = _branch(kv_dim, dim), _branch(kv_dim, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)  # xavier in-proj, zero biases
        # region_index[v, k]: flat patch index of the k-th patch of region v (row-major inside the region)
        v = grid_side // scale
        rows = torch.arange(v).repeat_interleave(v)[:, None] * scale + torch.arange(scale).repeat_interleave(scale)
        cols = torch.arange(v).repeat(v)[:, None] * scale + torch.arange(scale).repeat(scale)
        self.register_buffer("region_index", rows * grid_side + cols, persistent=False)  # [V, s*s]
        self.num_patches = grid_side * grid_side
        self.kv_dim, self.visual_tokens = kv_dim, v * v

    def analytic_flops(self) -> float:
        P, V, dim = self.num_patches, self.visual_tokens, self.dim
        branches = 2 * (self.kv_dim * dim + dim * dim) * P  # key and value branches over every patch
        # in-projections: q for V queries, k and v for the P keys (each region's s*s, V regions); scores and
        # A V: each query against its s*s keys (P in all); out projection over V tokens
        attn = dim * dim * V + 2 * dim * dim * P + 2 * dim * P + dim * dim * V
        return 2.0 * (branches + attn)

    def forward(self, queries: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [B, V, dim], features [B, n_levels, P, D] -> (attended [B, V, dim], attn [B, V, P])."""
        B, V, _ = queries.shape
        multi = features.permute(0, 2, 1, 3).flatten(2)  # [B, P, n_levels*D]
        k = self.k_branch(multi)[:, self.region_index].flatten(0, 1)  # [B*V, s*s, dim]
        v = self.v_branch(multi)[:, self.region_index].flatten(0, 1)
        out, weights = self.attn(queries.reshape(B * V, 1, self.dim), k, v, need_weights=True)  # weights: head mean
        # Attention map for inspection, scattered back into the full patch grid.
        local = weights.view(B, V, -1)
        attn = local.new_zeros(B, V, self.num_patches).scatter_(2, self.region_index.expand(B, -1, -1), local)
        return out.view(B, V, self.dim), attn


class TokenPacker(Compressor):
    """TokenPacker: point queries = main level bilinearly downsampled by s; each attends to its own region.

    Queries: Linear without bias + LayerNorm. Init as the reference: every Linear (the attention's output
    projection included) truncated normal std 0.02 with zero biases. Its final MLP is the VLM's projector.
    """

    multi_level = True

    def __init__(self, *, num_heads: int | None = None, **kw):
        super().__init__(**kw)
        self.q_in = nn.Sequential(nn.Linear(self.in_dim, self.out_dim, bias=False),
                                  nn.LayerNorm(self.out_dim, eps=LN_EPS))
        self.attn = RegionCrossAttention(
            grid_side=self.grid_side, scale=self.scale, kv_dim=self.num_levels * self.in_dim, dim=self.out_dim,
            num_heads=_check_heads(num_heads, self.out_dim),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def compress(self, features, query):
        main = self._grid(features[:, -1])
        points = F.interpolate(main, size=(self.side, self.side), mode="bilinear", align_corners=False)
        queries = self.q_in(points.flatten(2).transpose(1, 2))  # [B, V, out_dim]
        return self.attn(queries, features)

    def analytic_flops(self):
        return 2.0 * self.in_dim * self.out_dim * self.visual_tokens + self.attn.analytic_flops()


class QueCC(Compressor):
    """QueCC (the paper's): question-conditioned queries from a depthwise strided conv, then region attention.

    query [B, Dq] -> Linear + LayerNorm -> added to every main-level patch -> MLP + LayerNorm -> depthwise
    Conv2d with kernel = stride = s (one query per region) -> region cross-attention over multi-level features.
    At s = 1 the conv is a per-channel scale and the single key is the patch itself, so the softmax is 1 and the
    token is that patch's value: the question has no effect, as in the reference.
    """

    multi_level = True
    needs_query = True

    def __init__(self, *, num_heads: int | None = None, **kw):
        super().__init__(**kw)
        if self.query_dim is None:
            raise UserError("compressor 'quecc' needs query_dim (the LLM hidden size) to embed the question")
        D, dim, s = self.in_dim, self.out_dim, self.scale
        self.text_proj = nn.Sequential(nn.Linear(self.query_dim, D), nn.LayerNorm(D, eps=LN_EPS))
        self.q_branch = _branch(D, dim)
        self.down = nn.Conv2d(dim, dim, kernel_size=s, stride=s, groups=dim)  # depthwise: one query per region
        self.attn = RegionCrossAttention(grid_side=self.grid_side, scale=s, kv_dim=self.num_levels * D, dim=dim,
                                         num_heads=_check_heads(num_heads, dim))

    def compress(self, features, query):
        x = features[:, -1] + self.text_proj(query.to(features.dtype))[:, None]  # [B, P, D]
        x = self.down(self._grid(self.q_branch(x)))  # [B, dim, v, v]
        return self.attn(x.flatten(2).transpose(1, 2), features)

    def analytic_flops(self):
        D, dim, P = self.in_dim, self.out_dim, self.input_patches
        # text_proj once per image, q_branch over every patch, depthwise conv (dim * s*s per output token)
        return 2.0 * (self.query_dim * D + (D * dim + dim * dim) * P + dim * P) + self.attn.analytic_flops()


class RandomSelect(Compressor):
    """V of the P main-level patches, chosen at random, kept in raster order (no parameters).

    Training draws afresh for every image of every step (torch's global RNG, so a seeded run repeats);
    evaluation uses one fixed draw from ``seed``, the same patches for every image, so a score is repeatable.
    """

    has_params = False

    def __init__(self, *, seed: int = 0, **kw):
        super().__init__(**kw)
        gen = torch.Generator().manual_seed(seed)
        eval_index = torch.randperm(self.grid_side**2, generator=gen)[: self.visual_tokens].sort().values
        self.register_buffer("eval_index", eval_index, persistent=False)  # a function of seed: not saved

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        return list(range(1, grid_side * grid_side + 1))

    @classmethod
    def describe_valid(cls, grid_side: int) -> str:
        return f"any integer 1..{grid_side * grid_side}"

    def compress(self, features, query):
        main = features[:, -1]  # [B, P, D]
        B, P, _ = main.shape
        if self.training:
            index = torch.rand(B, P, device=main.device).argsort(1)[:, : self.visual_tokens].sort(1).values
        else:
            index = self.eval_index.expand(B, -1)
        tokens = main.gather(1, index[..., None].expand(-1, -1, main.shape[2]))
        keep = main.new_zeros(B, self.visual_tokens, P).scatter_(2, index[..., None], 1.0)  # which patch each is
        return tokens, keep


class Downsample(Compressor):
    """The image resized to v*patch pixels, so the frozen tower itself yields V = v*v patches (any v in
    1..grid_side). The resize happens before the tower (``VLM.encode_images``, ``resizes_image``); this module
    passes the small grid's main level on. The tower's cost falls with V (position embeddings interpolated)."""

    has_params = False
    resizes_image = True

    @classmethod
    def valid_visual_tokens(cls, grid_side: int) -> list[int]:
        return [v * v for v in range(1, grid_side + 1)]

    @property
    def input_patches(self) -> int:
        return self.visual_tokens

    def compress(self, features, query):
        return features[:, -1], None


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def _check_heads(num_heads: int | None, dim: int) -> int:
    if num_heads is None:
        return _default_heads(dim)
    if num_heads < 1 or dim % num_heads:
        raise UserError(
            f"compressor option num_heads={num_heads} must divide the compressor width {dim}; "
            f"allowed: {', '.join(map(str, _divisors(dim)))}"
        )
    return num_heads


COMPRESSORS: dict[str, type[Compressor]] = {
    "identity": Identity,
    "avgpool": AvgPool,
    "pixelshuffle": PixelShuffle,
    "perceiver": Perceiver,
    "tokenpacker": TokenPacker,
    "quecc": QueCC,
    "random": RandomSelect,
    "downsample": Downsample,
}


def _get(name: str) -> type[Compressor]:
    if name not in COMPRESSORS:
        raise UserError(f"compressor={name!r} is unknown; allowed: {', '.join(COMPRESSORS)}")
    return COMPRESSORS[name]


def valid_visual_tokens(name: str, grid_side: int) -> list[int]:
    """The V values compressor `name` accepts on a grid_side x grid_side grid.

    Grid compressors need V = v*v with v dividing grid_side; identity only V = P; perceiver takes any V >= 1
    (listed here as 1..P, the range that compresses); random any V in 1..P; downsample V = v*v, v in 1..grid_side
    (the image resized to v patches on a side).
    """
    return _get(name).valid_visual_tokens(grid_side)


def build_compressor(name: str, *, in_dim: int, grid_side: int, num_levels: int, visual_tokens: int,
                     query_dim: int | None = None, **options) -> Compressor:
    """Build compressor `name`; UserError for an unknown name, a V that does not fit, or an unknown option."""
    cls = _get(name)
    if not isinstance(visual_tokens, int) or not cls.accepts(visual_tokens, grid_side):
        raise UserError(
            f"visual_tokens={visual_tokens} does not fit a {grid_side}x{grid_side} patch grid for {name!r}; "
            f"valid: {cls.describe_valid(grid_side)}"
        )
    # options = keyword arguments of the class's __init__ chain, minus the ones we pass ourselves
    allowed = {p for c in cls.__mro__ if issubclass(c, Compressor) for p in inspect.signature(c.__init__).parameters}
    allowed -= {"self", "kw", "in_dim", "grid_side", "num_levels", "visual_tokens", "query_dim"}
    if not cls.has_params:
        allowed.discard("out_dim")
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(
            f"compressor option {unknown[0]!r} is not understood by {name!r}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
    return cls(in_dim=in_dim, grid_side=grid_side, num_levels=num_levels, visual_tokens=visual_tokens,
               query_dim=query_dim, **options)
