"""Sampler names -> diffusers schedulers, and the infotext name round trip."""
from __future__ import annotations

import importlib.util
import inspect

import pytest
import torch

from synthex.errors import SynthexError
from synthex.generate.samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    SCHEDULE_TYPES,
    canonical_sampler_name,
    make_scheduler,
    resolve_sampler,
    sampler_from_infotext,
    split_sampler_name,
)

EXPECTED_CLASS = {
    "DPM++ 2M Karras": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE Karras": "DPMSolverMultistepScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DPM++ 2M SDE": "DPMSolverMultistepScheduler",
    "Euler": "EulerDiscreteScheduler",
    "Euler a": "EulerAncestralDiscreteScheduler",
    "DDIM": "DDIMScheduler",
    "UniPC": "UniPCMultistepScheduler",
    "Heun": "HeunDiscreteScheduler",
    "LMS": "LMSDiscreteScheduler",
    "DDPM": "DDPMScheduler",
    "DPM++ 2M SDE Heun": "DPMSolverMultistepScheduler",
    "DPM++ 3M SDE": "DPMSolverMultistepScheduler",
    "DPM2": "KDPM2DiscreteScheduler",
    "DPM2 Karras": "KDPM2DiscreteScheduler",
    "DPM2 a": "KDPM2AncestralDiscreteScheduler",
    "DPM2 a Karras": "KDPM2AncestralDiscreteScheduler",
    "PLMS": "PNDMScheduler",
    "LCM": "LCMScheduler",
}
HAS_TORCHSDE = importlib.util.find_spec("torchsde") is not None
if HAS_TORCHSDE:
    EXPECTED_CLASS.update({"DPM++ SDE": "DPMSolverSDEScheduler",
                           "DPM++ SDE Karras": "DPMSolverSDEScheduler"})


@pytest.fixture(scope="module")
def base():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_default_and_names():
    assert SAMPLERS[0] == DEFAULT_SAMPLER == "DPM++ 2M Karras"
    assert set(SAMPLERS) == set(EXPECTED_CLASS)


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_builds_and_samples(name, base):
    scheduler = make_scheduler(name, base)
    assert type(scheduler).__name__ == EXPECTED_CLASS[name]
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's schedule is kept
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) >= 10
    # a few denoising steps on a toy model, with a seeded generator where the step takes one
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = 0.1 * scheduler.scale_model_input(x, t)
        kwargs = {"generator": gen} if takes_generator else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    assert torch.isfinite(x).all()


def test_karras_and_algorithm_flags(base):
    karras = make_scheduler("DPM++ 2M Karras", base)
    assert karras.config.use_karras_sigmas is True
    assert karras.config.algorithm_type == "dpmsolver++" and karras.config.solver_order == 2
    sde = make_scheduler("DPM++ 2M SDE Karras", base)
    assert sde.config.algorithm_type == "sde-dpmsolver++" and sde.config.use_karras_sigmas
    assert "generator" in inspect.signature(sde.step).parameters  # seeded SDE noise
    plain = make_scheduler("DPM++ 2M", base)
    assert plain.config.use_karras_sigmas is False


def test_flags_do_not_leak_from_the_base(base):
    karras = make_scheduler("DPM++ 2M SDE Karras", base)
    euler = make_scheduler("Euler", karras)  # from a scheduler instance with Karras on
    assert euler.config.use_karras_sigmas is False
    plain = make_scheduler("DPM++ 2M", karras.config)  # from a config mapping
    assert plain.config.algorithm_type == "dpmsolver++" and not plain.config.use_karras_sigmas


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("dpmpp_2m_karras", "DPM++ 2M Karras"),
        ("DPM++ 2M KARRAS", "DPM++ 2M Karras"),
        ("k_dpmpp_2m", "DPM++ 2M"),
        ("dpmpp_2m_sde_karras", "DPM++ 2M SDE Karras"),
        ("euler_a", "Euler a"),
        ("k_euler_a", "Euler a"),
        ("Euler A", "Euler a"),
        ("euler", "Euler"),
        ("unipc", "UniPC"),
        (" ddim ", "DDIM"),
    ],
)
def test_aliases(alias, name):
    assert canonical_sampler_name(alias) == name


def test_unknown_name_lists_valid_names(base):
    with pytest.raises(SynthexError, match="DPM\\+\\+ 2M Karras.*Euler a"):
        make_scheduler("DPM++ 3M", base)
    with pytest.raises(TypeError):
        make_scheduler("Euler", object())


@pytest.mark.parametrize("name", SAMPLERS)
def test_infotext_round_trip(name):
    sampler, schedule = split_sampler_name(name)
    assert sampler_from_infotext(sampler, schedule) == name
    assert canonical_sampler_name(" ".join(filter(None, (sampler, schedule)))) == name  # the app's join


def test_infotext_fields():
    assert split_sampler_name("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert split_sampler_name("dpmpp_2m_sde_karras") == ("DPM++ 2M SDE", "Karras")
    assert split_sampler_name("Euler a") == ("Euler a", None)
    # A1111 < 1.9 wrote the schedule into the sampler name
    assert sampler_from_infotext("DPM++ 2M Karras", None) == "DPM++ 2M Karras"
    # A1111 >= 1.9 "Automatic" = the sampler's default schedule
    assert sampler_from_infotext("DPM++ 2M", "Automatic") == "DPM++ 2M Karras"
    assert sampler_from_infotext("Euler", "Automatic") == "Euler"
    assert sampler_from_infotext("dpmpp_2m", "karras") == "DPM++ 2M Karras"
    with pytest.raises(SynthexError, match="has no Karras schedule"):
        make_scheduler(sampler_from_infotext("Euler a", "Karras"), DDPM())
    with pytest.raises(SynthexError, match="Polyexponential.*diffusers has no equivalent"):
        sampler_from_infotext("DPM++ 2M", "Polyexponential")


def DDPM():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


# ------------------------------------------------------------------------------- A1111 names, schedule types
@pytest.mark.parametrize(("name", "cls"), [
    ("DPM2", "KDPM2DiscreteScheduler"), ("DPM2 a", "KDPM2AncestralDiscreteScheduler"),
    ("k_dpm_2_a", "KDPM2AncestralDiscreteScheduler"), ("LCM", "LCMScheduler"),
    ("PLMS", "PNDMScheduler"), ("DPM++ 3M SDE", "DPMSolverMultistepScheduler"),
])
def test_a1111_samplers_missing_before(name, cls, base):
    assert type(make_scheduler(name, base)).__name__ == cls
    assert canonical_sampler_name(name) in SAMPLERS


def test_dpmpp_sde_karras_needs_torchsde(base):
    if HAS_TORCHSDE:
        scheduler = make_scheduler("DPM++ SDE Karras", base)
        assert type(scheduler).__name__ == "DPMSolverSDEScheduler" and scheduler.config.use_karras_sigmas
        return
    assert "DPM++ SDE Karras" not in SAMPLERS
    with pytest.raises(SynthexError, match=r"'DPM\+\+ SDE' needs the torchsde package.*pip install torchsde"):
        make_scheduler("DPM++ SDE Karras", base)
    with pytest.raises(SynthexError, match="pip install torchsde"):
        sampler_from_infotext("DPM++ SDE", "Karras")


def test_dpmpp_2s_a_is_refused_with_a_reason(base):
    with pytest.raises(SynthexError, match=r"'DPM\+\+ 2S a' is not supported: diffusers has no ancestral"):
        make_scheduler("DPM++ 2S a Karras", base)
    assert not any(name.startswith("DPM++ 2S") for name in SAMPLERS)


@pytest.mark.parametrize(("schedule", "flag"), [
    ("karras", "use_karras_sigmas"), ("Exponential", "use_exponential_sigmas"),
    ("beta", "use_beta_sigmas"),
])
def test_schedule_type_option(schedule, flag, base):
    scheduler = make_scheduler("Euler", base, schedule)
    assert scheduler.config[flag] is True
    others = {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"} - {flag}
    assert not any(scheduler.config[f] for f in others)
    scheduler.set_timesteps(8)
    label = {"karras": "Karras", "Exponential": "Exponential", "beta": "Beta"}[schedule]
    assert split_sampler_name("Euler", schedule) == ("Euler", label)
    assert sampler_from_infotext("Euler", label) == f"Euler {label}"
    assert make_scheduler(f"Euler {label}", base).config[flag] is True  # old-style name


def test_schedule_type_details(base):
    assert "automatic" in SCHEDULE_TYPES and "sgm_uniform" in SCHEDULE_TYPES
    assert make_scheduler("Euler", base, "sgm_uniform").config.timestep_spacing == "trailing"
    assert resolve_sampler("DPM++ 2M", "automatic")[1] == "karras"  # A1111's default for it
    assert resolve_sampler("Euler", "automatic")[1] == "uniform"
    assert resolve_sampler("DPM++ 2M Karras", "automatic")[1] == "karras"
    assert resolve_sampler("DPM++ 2M", None)[1] == "uniform"
    # plain DPM++ 2M says "Uniform" so A1111 does not read "Automatic" (= Karras) into it
    assert split_sampler_name("DPM++ 2M") == ("DPM++ 2M", "Uniform")
    assert sampler_from_infotext("DPM++ 2M", "Uniform") == "DPM++ 2M"
    assert sampler_from_infotext("DPM++ 2M SDE", "Exponential") == "DPM++ 2M SDE Exponential"
    with pytest.raises(SynthexError, match="already names the schedule Karras"):
        resolve_sampler("DPM++ 2M Karras", "exponential")
    with pytest.raises(SynthexError, match="'fancy' is not a schedule type; use one of: automatic"):
        resolve_sampler("Euler", "fancy")
