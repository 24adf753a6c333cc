"""Sampler names -> diffusers schedulers, and the infotext name round trip."""
from __future__ import annotations

import inspect

import pytest
import torch

from synthex.errors import SynthexError
from synthex.generate.samplers import (
    DEFAULT_SAMPLER,
    SAMPLERS,
    canonical_sampler_name,
    make_scheduler,
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
}


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
    with pytest.raises(SynthexError, match="Karras variant"):
        sampler_from_infotext("Euler a", "Karras")
    with pytest.raises(SynthexError, match="Exponential"):
        sampler_from_infotext("DPM++ 2M", "Exponential")
