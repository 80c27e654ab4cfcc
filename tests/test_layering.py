"""Models and losses convolve and max-pool only through `avjax.nn` (routed by platform).

`avjax.nn.Conv` / `ConvTranspose` / `max_pool` / `ConvLSTMCell` use the CPU matmul kernels
when lowered for CPU and XLA's own ops elsewhere; a bare Flax or lax convolution in a model
would silently take XLA:CPU's slow paths (as Melception, ResNet-50 and LPAPS once did).
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SCANNED = sorted(
    [*(REPO / "avjax" / "models").rglob("*.py"), *(REPO / "avjax" / "losses").glob("*.py")]
)

# Flax layers / functions that have a routed `avjax.nn` counterpart.
FLAX_NAMES = {"Conv", "ConvTranspose", "ConvLSTMCell", "max_pool"}
# lax convolutions: fine for what the routes do not cover, but then listed below.
LAX_NAMES = {"conv_general_dilated", "conv_transpose", "conv", "conv_with_general_padding"}

# Justified exceptions: (file relative to the repo, name) -> why.
ALLOWED = {
    # MelGAN's convolutions are 1-D ([B, T, C], weight-normalised, grouped, dilated); the
    # CPU routes are for 2-D NHWC convolutions, and XLA:CPU's 1-D ones already vocode a
    # mel in 0.34 s against the official 0.74 (README benchmarks).
    ("avjax/models/specvqgan/melgan.py", "lax.conv_general_dilated"),
}


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id, *reversed(parts)])


def _offences(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name is None:
                continue
            owner = name.rsplit(".", 1)[0]
            flax = owner in ("nn", "linen", "flax.linen") and node.attr in FLAX_NAMES
            lax = owner in ("lax", "jax.lax") and node.attr in LAX_NAMES
            if flax or lax:
                found.append((node.lineno, f"{owner.rsplit('.', 1)[-1]}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module in ("flax.linen", "jax.lax"):
            for alias in node.names:
                if alias.name in FLAX_NAMES | LAX_NAMES:
                    found.append((node.lineno, f"{node.module.split('.')[-1]}.{alias.name}"))
    return sorted(found)


def test_models_and_losses_use_the_routed_layers():
    assert len(SCANNED) > 10, SCANNED  # the glob found the packages
    bad, used = [], set()
    for path in SCANNED:
        rel = path.relative_to(REPO).as_posix()
        for line, name in _offences(path):
            if (rel, name) in ALLOWED:
                used.add((rel, name))
            else:
                bad.append(f"{rel}:{line}: {name} (use avjax.nn's routed layer)")
    assert not bad, "\n".join(bad)
    assert used == ALLOWED, f"stale allow-list entries: {ALLOWED - used}"


def test_the_scan_catches_bare_flax_and_lax_convolutions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import flax.linen as nn\nfrom jax import lax\nfrom flax.linen import ConvTranspose\n"
        "a = nn.Conv(4, (3, 3))\nb = nn.max_pool\nc = lax.conv_general_dilated\n"
        "d = flax.linen.ConvLSTMCell(4)\ne = nn.Dense(3)\n"
    )
    assert _offences(src) == [
        (3, "linen.ConvTranspose"),
        (4, "nn.Conv"),
        (5, "nn.max_pool"),
        (6, "lax.conv_general_dilated"),
        (7, "linen.ConvLSTMCell"),
    ]
