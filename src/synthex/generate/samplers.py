"""Sampler names as Stable Diffusion users know them, mapped to diffusers schedulers.

``make_scheduler("DPM++ 2M Karras", pipe.scheduler)`` builds the scheduler class with the model's
own noise schedule (``from_config(base.config, **overrides)``). Names are matched case-insensitively
and with aliases (``dpmpp_2m_karras``, ``k_dpmpp_2m``, ``euler_a``...). For infotext, a name splits
into A1111's ``Sampler`` and ``Schedule type`` fields (``split_sampler_name``) and back
(``sampler_from_infotext``).
"""
from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from synthex.errors import SynthexError

logger = logging.getLogger(__name__)

DEFAULT_SAMPLER = "DPM++ 2M Karras"
KARRAS = "Karras"
AUTOMATIC = "Automatic"
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: its diffusers class, config overrides, infotext fields and aliases."""

    name: str
    scheduler_class: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    karras: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def infotext_sampler(self) -> str:
        return self.name[: -len(KARRAS) - 1] if self.karras else self.name

    @property
    def schedule_type(self) -> str | None:
        return KARRAS if self.karras else None


_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M Karras", "DPMSolverMultistepScheduler", _DPMPP_2M, True,
                ("k_dpmpp_2m_karras", "dpmpp_2m_k")),
    SamplerSpec("DPM++ 2M SDE Karras", "DPMSolverMultistepScheduler", _DPMPP_2M_SDE, True,
                ("k_dpmpp_2m_sde_karras", "dpmpp_2m_sde_k")),
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP_2M, False,
                ("k_dpmpp_2m", "dpmsolver_multistep")),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _DPMPP_2M_SDE, False,
                ("k_dpmpp_2m_sde",)),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, False, ("k_euler", "euler_discrete")),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, False,
                ("k_euler_a", "euler_ancestral", "k_euler_ancestral", "euler_ancestral_discrete")),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, False, ("unipc_multistep",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, False, ("k_heun", "heun_discrete")),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, False, ("k_lms", "lms_discrete")),
    SamplerSpec("DDPM", "DDPMScheduler"),
)

SAMPLERS: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
"""Canonical sampler names, the default first."""


def _normalize(name: str) -> str:
    key = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_")


_BY_KEY: dict[str, SamplerSpec] = {}
for _spec in _SPECS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_KEY[_normalize(_key)] = _spec


def _unknown(name: str) -> SynthexError:
    return SynthexError(
        f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)} "
        "(case does not matter; aliases such as 'dpmpp_2m_karras' and 'euler_a' work too)"
    )


def get_sampler(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` for a name or alias; SynthexError listing the valid names."""
    if not isinstance(name, str):
        raise _unknown(repr(name))
    spec = _BY_KEY.get(_normalize(name))
    if spec is None:
        raise _unknown(name)
    return spec


def canonical_sampler_name(name: str) -> str:
    """``"dpmpp_2m_karras"`` -> ``"DPM++ 2M Karras"``."""
    return get_sampler(name).name


def _scheduler_class(spec: SamplerSpec) -> type:
    import diffusers

    return getattr(diffusers, spec.scheduler_class)


def scheduler_overrides(name: str, scheduler_class: type | None = None) -> dict[str, Any]:
    """Config overrides that turn any base config into this sampler's configuration.

    Sigma-schedule flags the class understands are set explicitly (Karras on or off, the others
    off), so a base config saved from, say, a Karras scheduler does not leak into plain Euler.
    """
    spec = get_sampler(name)
    cls = scheduler_class or _scheduler_class(spec)
    accepted = inspect.signature(cls.__init__).parameters
    overrides = dict(spec.overrides)
    for flag in _SIGMA_FLAGS:
        if flag in accepted:
            overrides[flag] = spec.karras and flag == "use_karras_sigmas"
    if spec.karras and "use_karras_sigmas" not in accepted:
        raise SynthexError(f"{cls.__name__} does not support Karras sigmas ({spec.name})")
    return overrides


def make_scheduler(name: str, base: Any) -> Any:
    """Build sampler ``name`` from a base scheduler (or its config): the model's noise schedule
    (betas, prediction type, timestep spacing...) is kept, the sampling algorithm replaced."""
    spec = get_sampler(name)
    config = getattr(base, "config", base)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"base must be a diffusers scheduler or its config mapping, got {type(base).__name__}"
        )
    cls = _scheduler_class(spec)
    overrides = scheduler_overrides(spec.name, cls)
    logger.debug("sampler %s -> %s(%s)", spec.name, cls.__name__, overrides)
    return cls.from_config(config, **overrides)


def split_sampler_name(name: str) -> tuple[str, str | None]:
    """Infotext fields ``(Sampler, Schedule type)``: ``"DPM++ 2M Karras"`` ->
    ``("DPM++ 2M", "Karras")``, ``"Euler a"`` -> ``("Euler a", None)`` (field omitted)."""
    spec = get_sampler(name)
    return spec.infotext_sampler, spec.schedule_type


# A1111 >= 1.9 "Automatic": the sampler's own default schedule (Karras for the DPM++ 2M family).
_AUTOMATIC_KARRAS = {"DPM++ 2M", "DPM++ 2M SDE"}


def sampler_from_infotext(sampler: str, schedule_type: str | None = None) -> str:
    """The canonical sampler name for infotext ``Sampler`` / ``Schedule type`` fields.

    No schedule type (infotexts before A1111 1.9 put it in the sampler name, "DPM++ 2M Karras")
    reads the sampler name alone; "Karras" selects the Karras variant; "Automatic" follows
    A1111's defaults. Other schedule types (Exponential, SGM Uniform...) have no equivalent
    here and raise SynthexError.
    """
    base = get_sampler(sampler)
    schedule = (schedule_type or "").strip()
    if not schedule:
        return base.name
    if schedule.lower() == AUTOMATIC.lower():
        karras = base.infotext_sampler in _AUTOMATIC_KARRAS or base.karras
    elif schedule.lower() == KARRAS.lower():
        karras = True
    else:
        raise SynthexError(
            f"Schedule type {schedule_type!r} is not supported; use Karras or Automatic, "
            f"or one of the samplers: {', '.join(SAMPLERS)}"
        )
    if not karras:
        return base.name
    try:
        return get_sampler(f"{base.infotext_sampler} {KARRAS}").name
    except SynthexError:
        raise SynthexError(
            f"Sampler {sampler!r} has no Karras variant here; samplers with one: "
            f"{', '.join(s.name for s in _SPECS if s.karras)}"
        ) from None
