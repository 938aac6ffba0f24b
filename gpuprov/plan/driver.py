"""Which NVIDIA driver a GPU needs on a distro, and why: pure, over the data files in
gpuprov/data/nvidia/ (each names its sources; scripts/generate-nvidia-data.py makes two of them).

``match(data, request)`` picks the driver branch, the kernel modules (open or proprietary) and
the distro's exact package names. It explains the choice, one reason per line. A request that
cannot be met is a UsageError that says why and names the newest branch the card supports.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources

import yaml

from gpuprov.errors import NotFoundError, UsageError

MODULES = ("open", "proprietary")
NVIDIA_VENDOR = "10de"
OPEN_MODULES_FROM = 515  # NVIDIA's open kernel modules first shipped with branch 515
OPEN_BY_DEFAULT_FROM = 560  # and are what NVIDIA installs by default from branch 560
# Debian id list -> the branch it stands for ("current" is the release's nvidia-driver).
_LIST_BRANCH = re.compile(r"(?:legacy|tesla)-(\d+)(?:xx)?(?:-amd64)?")


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


@dataclass(frozen=True)
class DriverData:
    gpus: dict[str, dict]
    sources: dict
    architectures: dict[str, dict]
    cuda: dict[str, str]  # CUDA "major.minor" -> minimum driver version
    distros: dict[str, dict]
    debian: dict[str, dict]  # codename -> {"packages": {name: version}}

    @classmethod
    def load(cls) -> DriverData:
        folder = resources.files("gpuprov") / "data" / "nvidia"
        gpus = json.loads((folder / "gpus.json").read_text())
        debian = json.loads((folder / "debian.json").read_text())
        return cls(
            gpus={k: v for k, v in gpus.items() if not k.startswith("_")},
            sources=gpus["_sources"],
            architectures=yaml.safe_load((folder / "architectures.yaml").read_text()),
            cuda=yaml.safe_load((folder / "cuda.yaml").read_text()),
            distros=yaml.safe_load((folder / "distros.yaml").read_text()),
            debian={k: v for k, v in debian.items() if not k.startswith("_")},
        )

    def current_branch(self, codename: str) -> int:
        """The branch of a Debian release's default nvidia-driver."""
        return _version(self.debian[codename]["packages"]["nvidia-driver"])[0]


@dataclass(frozen=True)
class DriverRequest:
    gpu: str  # "10de:1d01"
    distro: str = "debian12"
    cuda: str | None = None  # "12.4"
    modules: str | None = None  # "open" | "proprietary" | None: the card's and branch's default


@dataclass(frozen=True)
class DriverMatch:
    gpu: str
    name: str
    chip: str
    architecture: str | None
    distro: str
    distro_name: str
    branch: int
    version: str | None  # the exact package version, where the distro's archive is known
    modules: str
    packages: list[str]
    headless: list[str]  # the compute-only set, without X and OpenGL
    module_stream: str | None  # the RHEL family's dnf module stream
    cuda: str | None
    cuda_minimum_driver: str | None
    why: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Candidate:
    branch: int
    version: str | None = None  # the exact version, where the distro's archive is known
    # modules -> {"packages": [...], "headless": [...], "module": ...}
    offers: dict[str, dict] = field(default_factory=dict)
    reason: str = ""


def match(data: DriverData, request: DriverRequest, *, hint_elsewhere: bool = True
          ) -> DriverMatch:
    gpu_id, gpu = _gpu(data, request.gpu)
    distro = data.distros.get(request.distro)
    if distro is None:
        raise UsageError(f"unknown distro {request.distro!r}",
                         f"choose one of: {', '.join(data.distros)}")
    if request.modules not in (None, *MODULES):
        raise UsageError(f"--modules must be open or proprietary, not {request.modules!r}")
    cuda, cuda_minimum = _cuda(data, request.cuda)
    arch = gpu["architecture"]
    info = data.architectures.get(arch or "", {})
    card = _card_words(gpu_id, gpu)
    first, last = _branch_range(data, gpu, info)
    newest = (f"the newest branch for this card is {last}" if last
              else "every current branch supports this card")
    why = [f"{card} is a {arch or 'GPU of unknown architecture'} GPU "
           f"({data.sources['names']})."]

    open_support = info.get("open_modules", "none")
    if request.modules == "open" and open_support == "none":
        raise UsageError(
            f"{card} cannot use the open kernel modules: they need the GPU System Processor "
            f"(GSP), which NVIDIA GPUs have from Turing on, and this is "
            + (f"a {arch} GPU" if arch else "a GPU of unknown architecture"),
            f"use --modules proprietary; {newest}")
    if request.modules == "proprietary" and open_support == "required":
        raise UsageError(f"{card} is a {arch} GPU, which only the open kernel modules drive",
                         "use --modules open (or leave --modules out)")
    if cuda:
        _check_cuda_supports(data, card, arch, info, cuda, last)

    candidates = (_debian_candidates(data, distro, gpu_id, gpu) if distro["family"] == "debian"
                  else _branch_candidates(distro, arch, first, last))
    if not candidates:
        raise UsageError(f"no driver in {distro['name']} supports {card}",
                         _elsewhere(data, request, newest) if hint_elsewhere else None)
    too_old, no_open = [], []
    for candidate in candidates:
        modules = request.modules or _default_modules(open_support, candidate.branch)
        offer = candidate.offers.get(modules)
        if offer is None or (modules == "open" and candidate.branch < OPEN_MODULES_FROM):
            no_open.append(_driver_words(candidate))
            continue
        if cuda and not _meets(candidate, cuda_minimum):
            too_old.append(_driver_words(candidate))
            continue
        why.append(candidate.reason)
        why.append(_modules_reason(arch, open_support, modules, candidate.branch,
                                   asked=request.modules is not None))
        if cuda:
            why.append(f"CUDA {cuda} needs driver {cuda_minimum} or newer; "
                       f"{_driver_words(candidate)} meets it (NVIDIA's CUDA release notes).")
        fill = {"branch": candidate.branch}
        return DriverMatch(
            gpu=gpu_id, name=gpu["name"], chip=gpu["chip"], architecture=arch,
            distro=request.distro, distro_name=distro["name"], branch=candidate.branch,
            version=candidate.version, modules=modules,
            packages=[p.format(**fill) for p in offer["packages"]],
            headless=[p.format(**fill) for p in offer.get("headless", offer["packages"])],
            module_stream=offer["module"].format(**fill) if "module" in offer else None,
            cuda=cuda, cuda_minimum_driver=cuda_minimum, why=why)
    reasons = []
    if no_open:
        reasons.append(f"{', '.join(no_open)} {'has' if len(no_open) == 1 else 'have'} no open "
                       "kernel modules there")
    if too_old:
        reasons.append(f"CUDA {cuda} needs driver {cuda_minimum} or newer, and "
                       f"{', '.join(too_old)} {'is' if len(too_old) == 1 else 'are'} older")
    best = candidates[0]
    raise UsageError(
        f"no driver in {distro['name']} meets the request for {card}: " + "; ".join(reasons),
        f"its newest driver there is {_driver_words(best)}, which supports CUDA up to "
        f"{_newest_cuda(data, best, info.get('last_cuda')) or 'none'}; {newest}")


def _gpu(data: DriverData, text: str) -> tuple[str, dict]:
    gpu_id = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{4}", gpu_id):
        raise UsageError(f"--gpu must be a PCI id VENDOR:DEVICE, such as 10de:2330, not {text!r}",
                         "lspci -nn shows each device's id in brackets")
    if not gpu_id.startswith(NVIDIA_VENDOR + ":"):
        raise UsageError(f"{gpu_id} is not an NVIDIA device (NVIDIA's vendor id is 10de)")
    gpu = data.gpus.get(gpu_id)
    if gpu is None:
        raise NotFoundError(
            f"{gpu_id} is neither an NVIDIA GPU in pci.ids nor in any of Debian's driver id lists "
            f"({data.sources['names']}; {', '.join(data.sources['ids'].values())})",
            "check the id with lspci -nn; a card newer than these lists needs them regenerated "
            "(scripts/generate-nvidia-data.py)")
    return gpu_id, gpu


def _cuda(data: DriverData, text: str | None) -> tuple[str | None, str | None]:
    if text is None:
        return None, None
    parts = text.strip().split(".")
    if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
        raise UsageError(f"--cuda must be a CUDA version such as 12.4, not {text!r}")
    cuda = f"{int(parts[0])}.{int(parts[1])}"
    if cuda not in data.cuda:
        raise UsageError(f"CUDA {cuda} is not in gpuprov's table of CUDA releases",
                         f"known: {', '.join(sorted(data.cuda, key=_version))}")
    return cuda, data.cuda[cuda]


def _card_words(gpu_id: str, gpu: dict) -> str:
    if gpu["chip"] and gpu["name"] != gpu["chip"]:
        return f"{gpu_id} ({gpu['chip']}, {gpu['name']})"
    return f"{gpu_id} ({gpu['name'] or 'not named in pci.ids'})"


def _list_branch(data: DriverData, codename: str, list_name: str) -> int | None:
    if list_name == "current":
        return data.current_branch(codename)
    found = _LIST_BRANCH.fullmatch(list_name)
    return int(found.group(1)) if found else None


def _branch_range(data: DriverData, gpu: dict, info: dict) -> tuple[int, int | None]:
    """The branches that drive this card: from the oldest Debian list that names it (or, for
    a card newer than all of them, the architecture's first branch) to the architecture's last."""
    listed = [b for codename, lists in gpu["debian"].items() for name in lists
              if (b := _list_branch(data, codename, name)) is not None]
    newest_listed = max(data.current_branch(c) for c in data.debian)
    first = min(listed) if listed else max(info.get("first_branch") or 0, newest_listed + 1)
    last = info.get("last_branch")
    if last is None and not info:  # unknown architecture: only what Debian says
        last = max(listed) if listed else None
    return first, last


def _check_cuda_supports(data: DriverData, card: str, arch: str | None, info: dict, cuda: str,
                         last: int | None) -> None:
    last_cuda = info.get("last_cuda")
    if last_cuda is None:
        return
    if last_cuda == "none" or _version(cuda) > _version(last_cuda):
        newest = (f"the newest branch for this card is {last}, which supports CUDA up to "
                  f"{_newest_cuda(data, _Candidate(last), last_cuda) or 'none'}") if last else ""
        raise UsageError(
            f"CUDA {cuda} does not support {card}: "
            + (f"{arch} GPUs never ran CUDA" if last_cuda == "none"
               else f"the last CUDA for {arch} GPUs is {last_cuda}"),
            newest or None)


def _newest_cuda(data: DriverData, candidate: _Candidate, cap: str | None) -> str | None:
    """The newest CUDA release ``candidate``'s driver runs, up to the architecture's last."""
    if cap == "none":
        return None
    fits = [v for v, minimum in data.cuda.items()
            if _meets(candidate, minimum) and (cap is None or _version(v) <= _version(cap))]
    return max(fits, key=_version) if fits else None


def _meets(candidate: _Candidate, minimum: str) -> bool:
    if candidate.version:  # the exact version: compare it
        return _version(candidate.version) >= _version(minimum)
    # A branch: its current releases are newer than any GA minimum within the branch.
    return candidate.branch >= _version(minimum)[0]


def _driver_words(candidate: _Candidate) -> str:
    return f"driver {candidate.version}" if candidate.version else f"branch {candidate.branch}"


def _debian_candidates(data: DriverData, distro: dict, gpu_id: str, gpu: dict) -> list[_Candidate]:
    codename = distro["codename"]
    packages = data.debian[codename]["packages"]
    lists = set(gpu["debian"].get(codename, []))
    candidates = []
    for series in distro["series"]:
        if series["list"] not in lists:
            continue
        version = packages[series["version_of"]].split("-")[0]  # upstream, without the revision
        list_file = "nvidia.ids" if series["list"] == "current" else f"nvidia-{series['list']}.ids"
        reason = (f"{series['version_of']} {version} in {distro['name']} drives it: "
                  f"{gpu_id} is in {list_file} ({data.sources['ids'][codename]}).")
        candidates.append(_Candidate(
            branch=_version(version)[0], version=version, reason=reason,
            offers={m: series[m] for m in MODULES if m in series}))
    return candidates


def _branch_candidates(distro: dict, arch: str | None, first: int,
                       last: int | None) -> list[_Candidate]:
    candidates = []
    for branch in distro["branches"]:  # newest first
        if branch < first or (last is not None and branch > last):
            continue
        limit = f" (NVIDIA's last for {arch} GPUs)" if branch == last else ""
        reason = (f"Branch {branch}{limit} is the newest branch in {distro['name']} that "
                  f"drives this card (gpuprov/data/nvidia/distros.yaml).")
        candidates.append(_Candidate(branch=branch, reason=reason,
                                     offers={m: distro[m] for m in MODULES if m in distro}))
    return candidates


def _default_modules(open_support: str, branch: int) -> str:
    if open_support == "required" or (open_support == "recommended"
                                      and branch >= OPEN_BY_DEFAULT_FROM):
        return "open"
    return "proprietary"


def _modules_reason(arch: str | None, open_support: str, modules: str, branch: int,
                    asked: bool) -> str:
    if open_support == "none":
        return (f"{arch or 'This'} GPUs have no GPU System Processor (GSP), so only the "
                "proprietary kernel modules drive them.")
    if open_support == "required":
        return f"{arch} GPUs are driven only by the open kernel modules."
    if asked:
        return f"The {modules} kernel modules, as asked (both drive {arch} GPUs)."
    if modules == "open":
        return (f"NVIDIA recommends the open kernel modules for {arch} GPUs, and installs them "
                f"by default from branch {OPEN_BY_DEFAULT_FROM}.")
    return (f"Both kernel modules drive {arch} GPUs; below branch {OPEN_BY_DEFAULT_FROM} the "
            f"proprietary ones are the default (--modules open for the other).")


def _elsewhere(data: DriverData, request: DriverRequest, newest: str) -> str:
    """Where the card does have a driver, for the hint of a refusal."""
    others = []
    for name in data.distros:
        if name == request.distro:
            continue
        try:
            found = match(data, DriverRequest(request.gpu, name, request.cuda, request.modules),
                          hint_elsewhere=False)
        except UsageError:
            continue
        others.append(f"{name} ({found.packages[0]}"
                      + (f" {found.version}" if found.version else "") + ")")
    where = f"; it has one in {', '.join(others)}" if others else ""
    return f"{newest}{where}"
