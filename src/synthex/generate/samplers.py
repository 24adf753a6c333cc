"""Sampler names as Stable Diffusion users know them, mapped to diffusers schedulers.

A sampler is an algorithm (``DPM++ 2M``, ``Euler a``...) plus a *schedule type* (how the noise
levels are spaced: ``Karras``, ``Exponential``...), the two fields A1111 (v1.9+) writes as
``Sampler`` and ``Schedule type``. Older A1111 versions put the schedule into the name
(``DPM++ 2M Karras``); both spellings are read.

``make_scheduler("DPM++ 2M Karras", pipe.scheduler)`` (or ``make_scheduler("DPM++ 2M",
pipe.scheduler, "karras")``) builds the scheduler class with the model's own noise schedule
(``from_config(base.config, **overrides)``). Names are matched case-insensitively and with
aliases (``dpmpp_2m_karras``, ``k_dpmpp_2m``, ``euler_a``...). A sampler this installation
cannot run (``DPM++ SDE`` without torchsde) or that diffusers has no honest equivalent for
(``DPM++ 2S a``) raises :class:`SynthexError` saying what to do instead.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from synthex.errors import SynthexError
from synthex.generate.defaults import DEFAULT_SAMPLER  # re-exported here

logger = logging.getLogger(__name__)

KARRAS = "Karras"
AUTOMATIC = "Automatic"
_SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")

# schedule key -> (A1111 label, config overrides on top of "all sigma flags off")
_SCHEDULES: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("Uniform", {}),
    "karras": ("Karras", {"use_karras_sigmas": True}),
    "exponential": ("Exponential", {"use_exponential_sigmas": True}),
    "beta": ("Beta", {"use_beta_sigmas": True}),
    "sgm_uniform": ("SGM Uniform", {"timestep_spacing": "trailing"}),
}
SCHEDULE_TYPES: tuple[str, ...] = ("automatic", *_SCHEDULES)
"""Values of ``--schedule-type``: ``automatic`` = A1111's default for the sampler."""
_UNSUPPORTED_SCHEDULES = ("polyexponential", "kl_optimal", "align_your_steps", "simple", "normal",
                          "ddim", "turbo", "align_your_steps_gits", "align_your_steps_11",
                          "align_your_steps_32")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler algorithm: its diffusers class, config overrides, A1111's default schedule
    ("Automatic"), aliases, and the optional module it needs."""

    name: str
    scheduler_class: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    automatic: str = "uniform"
    aliases: tuple[str, ...] = ()
    requires: str | None = None
    refused: str | None = None
    """When set, the sampler is known but refused with this explanation."""

    @property
    def infotext_sampler(self) -> str:
        return self.name


_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
_DPMPP_2M_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

_SPECS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP_2M, "karras",
                ("k_dpmpp_2m", "dpmsolver_multistep")),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _DPMPP_2M_SDE, "karras",
                ("k_dpmpp_2m_sde",)),
    SamplerSpec("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler",
                {**_DPMPP_2M_SDE, "solver_type": "heun"}, "exponential", ("k_dpmpp_2m_sde_heun",)),
    SamplerSpec("DPM++ 3M SDE", "DPMSolverMultistepScheduler",
                {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, "exponential",
                ("k_dpmpp_3m_sde",)),
    SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, "karras",
                ("k_dpmpp_sde", "dpmsolver_sde"), requires="torchsde"),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, "karras", ("k_dpm_2", "dpm_2", "kdpm2")),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "karras",
                ("k_dpm_2_a", "dpm_2_a", "dpm2_ancestral", "kdpm2_ancestral")),
    SamplerSpec("DPM++ 2S a", "DPMSolverSinglestepScheduler", {}, "karras",
                ("k_dpmpp_2s_a", "dpmpp_2s_ancestral", "k_dpmpp_2s_ancestral"),
                refused="diffusers has no ancestral single-step DPM++ solver (its "
                        "DPMSolverSinglestepScheduler adds no noise, so the image would not be the "
                        "one A1111 makes); use 'DPM++ 2M SDE' (stochastic) or 'Euler a' instead"),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, "uniform", ("k_euler", "euler_discrete")),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, "uniform",
                ("k_euler_a", "euler_ancestral", "k_euler_ancestral", "euler_ancestral_discrete")),
    SamplerSpec("DDIM", "DDIMScheduler"),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, "uniform", ("pndm",)),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, "uniform", ("unipc_multistep",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, "uniform", ("k_heun", "heun_discrete")),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, "uniform", ("k_lms", "lms_discrete")),
    SamplerSpec("LCM", "LCMScheduler", {}, "uniform", ("lcm_scheduler",)),
    SamplerSpec("DDPM", "DDPMScheduler"),
)


def _available(spec: SamplerSpec) -> bool:
    return spec.refused is None and (spec.requires is None
                                     or importlib.util.find_spec(spec.requires) is not None)


def _name(spec: SamplerSpec, schedule: str | None) -> str:
    return spec.name if schedule in (None, "uniform") else f"{spec.name} {_SCHEDULES[schedule][0]}"


SAMPLERS: tuple[str, ...] = tuple(dict.fromkeys([DEFAULT_SAMPLER] + [
    name for spec in _SPECS if _available(spec)
    for name in ([_name(spec, "karras"), spec.name] if spec.automatic == "karras" else [spec.name])
]))
"""Sampler names this installation runs (the default first; A1111's old "... Karras" names
included for the samplers whose A1111 default schedule is Karras)."""
ALL_SAMPLERS: tuple[str, ...] = tuple(spec.name for spec in _SPECS)
"""Every sampler algorithm known, including those refused here (with their reason)."""


def _normalize(name: str) -> str:
    key = name.strip().lower().replace("++", "pp").replace("+", "p")
    return re.sub(r"[^a-z0-9]+", "_", key).strip("_")


_BY_KEY: dict[str, SamplerSpec] = {}
for _spec in _SPECS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_KEY[_normalize(_key)] = _spec
_SCHEDULE_SUFFIXES = sorted(((f"_{key}", key) for key in _SCHEDULES), key=lambda s: -len(s[0]))


def _unknown(name: str) -> SynthexError:
    return SynthexError(
        f"Unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)} "
        "(case does not matter; aliases such as 'dpmpp_2m_karras' and 'euler_a' work too, and "
        "any sampler takes a schedule type: --schedule-type karras/exponential/...)"
    )


def _parse(name: Any) -> tuple[SamplerSpec, str | None]:
    """(spec, schedule key from the name or None): "DPM++ 2M Karras" -> (DPM++ 2M, "karras")."""
    if not isinstance(name, str):
        raise _unknown(repr(name))
    key = _normalize(name)
    if key in _BY_KEY:
        return _BY_KEY[key], None
    for suffix, schedule in _SCHEDULE_SUFFIXES:
        if key.endswith(suffix) and key[: -len(suffix)] in _BY_KEY:
            return _BY_KEY[key[: -len(suffix)]], schedule
    raise _unknown(name)


def normalize_schedule(schedule_type: Any) -> str | None:
    """``"Karras"`` -> ``"karras"``, ``"SGM Uniform"`` -> ``"sgm_uniform"``, None/"" -> None.
    SynthexError naming the value and the supported ones otherwise."""
    if schedule_type is None or (isinstance(schedule_type, str) and not schedule_type.strip()):
        return None
    key = _normalize(schedule_type) if isinstance(schedule_type, str) else ""
    if key in SCHEDULE_TYPES:
        return key
    what = ("is one of A1111's schedule types that diffusers has no equivalent for"
            if key in _UNSUPPORTED_SCHEDULES else "is not a schedule type")
    raise SynthexError(f"Schedule type {schedule_type!r} {what}; use one of: "
                       f"{', '.join(SCHEDULE_TYPES)}")


def resolve_sampler(name: Any, schedule_type: str | None = None) -> tuple[SamplerSpec, str]:
    """``(spec, schedule key)`` for a sampler name and an optional schedule type.

    No schedule type: the one in the name ("DPM++ 2M Karras"), else uniform (the scheduler's
    own spacing). ``automatic``: the name's, else A1111's default for that sampler. A schedule
    type that contradicts the name raises SynthexError, and so does a sampler that is refused
    here or needs a module that is not installed.
    """
    spec, from_name = _parse(name)
    schedule = normalize_schedule(schedule_type)
    if schedule == "automatic":
        schedule = from_name or spec.automatic
    elif schedule is not None and from_name is not None and schedule != from_name:
        raise SynthexError(
            f"Sampler {name!r} already names the schedule {_SCHEDULES[from_name][0]}, but schedule "
            f"type {schedule_type!r} was given; pass the sampler without it ({spec.name!r}) or "
            "drop the schedule type")
    schedule = schedule or from_name or "uniform"
    check_available(spec)
    return spec, schedule


def check_available(spec: SamplerSpec) -> None:
    """SynthexError when ``spec`` is refused here or needs a module that is not installed."""
    if spec.refused:
        raise SynthexError(f"Sampler {spec.name!r} is not supported: {spec.refused}")
    if spec.requires and importlib.util.find_spec(spec.requires) is None:
        raise SynthexError(
            f"Sampler {spec.name!r} needs the {spec.requires} package (diffusers' "
            f"{spec.scheduler_class} uses it); install it with 'pip install {spec.requires}', or "
            "choose another sampler such as 'DPM++ 2M SDE Karras'")


def get_sampler(name: str) -> SamplerSpec:
    """The :class:`SamplerSpec` for a name or alias (schedule suffix allowed); SynthexError
    listing the valid names, or saying why a known sampler cannot run here."""
    return resolve_sampler(name)[0]


def canonical_sampler_name(name: str, schedule_type: str | None = None) -> str:
    """``"dpmpp_2m_karras"`` -> ``"DPM++ 2M Karras"``; ``("euler", "exponential")`` ->
    ``"Euler Exponential"``; the uniform schedule adds nothing (``"Euler"``)."""
    spec, schedule = resolve_sampler(name, schedule_type)
    return _name(spec, schedule)


def _scheduler_class(spec: SamplerSpec) -> type:
    import diffusers

    return getattr(diffusers, spec.scheduler_class)


def scheduler_overrides(name: str, scheduler_class: type | None = None,
                        schedule_type: str | None = None) -> dict[str, Any]:
    """Config overrides that turn any base config into this sampler's configuration.

    Sigma-schedule flags the class understands are set explicitly (the chosen one on, the others
    off), so a base config saved from, say, a Karras scheduler does not leak into plain Euler.
    A schedule the class cannot do raises SynthexError.
    """
    spec, schedule = resolve_sampler(name, schedule_type)
    cls = scheduler_class or _scheduler_class(spec)
    accepted = inspect.signature(cls.__init__).parameters
    overrides = dict(spec.overrides)
    for flag in _SIGMA_FLAGS:
        if flag in accepted:
            overrides[flag] = False
    label, wanted = _SCHEDULES[schedule]
    missing = [key for key in wanted if key not in accepted]
    if missing:
        able = [s.name for s in _SPECS if _available(s) and all(
            k in inspect.signature(_scheduler_class(s).__init__).parameters for k in wanted)]
        raise SynthexError(f"Sampler {spec.name!r} ({cls.__name__}) has no {label} schedule; "
                           f"samplers with one: {', '.join(able)}")
    if schedule == "beta" and importlib.util.find_spec("scipy") is None:
        raise SynthexError("the Beta schedule needs scipy; install it with 'pip install scipy'")
    overrides.update(wanted)
    return overrides


def make_scheduler(name: str, base: Any, schedule_type: str | None = None) -> Any:
    """Build sampler ``name`` from a base scheduler (or its config): the model's noise schedule
    (betas, prediction type, timestep spacing...) is kept, the sampling algorithm replaced."""
    spec, schedule = resolve_sampler(name, schedule_type)
    config = getattr(base, "config", base)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"base must be a diffusers scheduler or its config mapping, got {type(base).__name__}"
        )
    cls = _scheduler_class(spec)
    overrides = scheduler_overrides(spec.name, cls, schedule)
    logger.debug("sampler %s (%s) -> %s(%s)", spec.name, schedule, cls.__name__, overrides)
    return cls.from_config(config, **overrides)


def split_sampler_name(name: str, schedule_type: str | None = None) -> tuple[str, str | None]:
    """Infotext fields ``(Sampler, Schedule type)``: ``"DPM++ 2M Karras"`` ->
    ``("DPM++ 2M", "Karras")``, ``"Euler a"`` -> ``("Euler a", None)`` (field omitted).

    The uniform schedule is written as ``Uniform`` for samplers whose A1111 default ("Automatic")
    is another one, so A1111 does not read the field's absence as its default.
    """
    spec, schedule = resolve_sampler(name, schedule_type)
    if schedule == "uniform" and spec.automatic == "uniform":
        return spec.name, None
    return spec.name, _SCHEDULES[schedule][0]


def sampler_from_infotext(sampler: str, schedule_type: str | None = None) -> str:
    """The canonical sampler name for infotext ``Sampler`` / ``Schedule type`` fields.

    No schedule type (infotexts before A1111 1.9 put it in the sampler name, "DPM++ 2M Karras")
    reads the sampler name alone; "Automatic" follows A1111's default for the sampler; Uniform,
    Karras, Exponential, Beta and SGM Uniform select that schedule. Other A1111 schedule types
    (Polyexponential, Align Your Steps...) have no equivalent here and raise SynthexError.
    """
    spec, from_name = _parse(sampler)
    schedule = normalize_schedule(schedule_type)
    if schedule is not None and from_name is not None and schedule not in ("automatic", from_name):
        raise SynthexError(f"infotext Sampler {sampler!r} contradicts Schedule type {schedule_type!r}")
    return canonical_sampler_name(spec.name, schedule or from_name)
