"""MultiVae's models on our contract: `multivae/<name>` for MultiVae's MVAE, MoPoE, MMVAE, MMVAE+, JMVAE, MVTCAE.

MultiVae (PyPI `multivae`, Apache-2.0; an optional extra: ``pip install -e ".[multivae]"``) is the library most
users of these models reach for. This plugin registers its implementations beside ours, so the same recipe,
data, budget and evaluation score both: the leaderboard then shows what is the method and what is the code.

What each `multivae/<name>` gets from the harness (as benchmarks/peer_multivae.py does):
- our per-modality networks (`shala_bench.backbones`, chosen by modality kind) wrapped in MultiVae's
  BaseEncoder / BaseDecoder interfaces (`OurEncoder`, `OurDecoder`; MMVAE+'s in `OurSplitEncoder`);
- the recipe's latent size and likelihoods: Laplace with the recipe's `likelihood_scale`, Gaussian with unit
  variance, Bernoulli on logits; no likelihood rescaling;
- its own settings (β, K, subsets …) from a config dataclass below, β inherited from the recipe.

How our contract maps onto MultiVae's (`mv` is the wrapped MultiVae model, `ds` = MultimodalBaseDataset(data=x)):
    loss(batch, "vae")      mv(ds).loss_sum / B  (every model's batch sum of its negative objective, as a mean;
                            MultiVae's own `.loss` is the sum for MMVAE/MMVAE+ and the mean for the others)
    encode(x_S)             mv.encode(ds, cond_mod=S, return_mean=True).z  (each model's own subset posterior)
    decode(z, mods)         mv.decode(ModelOutput(z=z, one_latent_space=True), mods); MMVAE+ appends w ~ its prior
    sample(n)               mv.decode(mv.generate_from_prior(n), all)
    generate(x_S, targets)  mv.predict(ds, cond_mod=S, gen_mod=targets)  (one posterior sample, as MultiVae does)
    stages                  ("vae",): MultiVae's models train in one stage
    negative_bound(x)       the batch mean of loss for every sample (MultiVae has no per-sample objective),
                            named multivae_<name>_objective (bound_name), not "elbo"

MultiVae's encode / decode / predict switch the model to eval mode (and decode runs under no_grad); the adapter
puts the training flag back after each call. KL warm-up is off (MultiVae counts it in epochs, which our
trainer, budgeted in samples, does not have). Registration asks only whether `multivae` is installed
(`importlib.util.find_spec`), so building the registry does not pay MultiVae's import (seconds); the factory
imports it.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor

from shala_bench.backbones import make_backbones
from shala_bench.config import Config, ge, gt, inherit, one_of, setting
from shala_bench.contract import MultimodalVAE
from shala_bench.errors import ProtocolError
from shala_bench.hookspecs import hookimpl
from shala_bench.registry import ModelEntry

INSTALL = 'pip install -e ".[multivae]"'
LIKELIHOODS = {"laplace": "laplace", "gaussian": "normal", "bernoulli": "bernoulli"}  # ours -> MultiVae's


def missing() -> str | None:
    """Why MultiVae cannot be used here (None: it is installed)."""
    for mod in ("multivae", "pythae"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed"
    return None


# ---------------------------------------------------------------- configs: MultiVae's settings, ours to set
@dataclass(frozen=True)
class MVAEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="MVAEConfig.beta: β of every ELBO term (None: the recipe's)")
    subsets: int = setting(1, range=ge(0), doc="MVAEConfig.k: random subsets (2 <= |S| <= M-1) per batch; 0: none")


@dataclass(frozen=True)
class MoPoEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="MoPoEConfig.beta: β of the mixture of KLs (None: the recipe's)")


@dataclass(frozen=True)
class MMVAEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="MMVAEConfig.beta (None: the recipe's)")
    K: int = setting(1, range=gt(0), doc="MMVAEConfig.K: importance samples per expert")
    posterior: str = setting("normal", range=one_of("normal", "laplace_with_softmax"),
                             doc="MMVAEConfig.prior_and_posterior_dist (normal: Gaussian experts, as ours)")
    learn_prior: bool = setting(False, doc="MMVAEConfig.learn_prior (False: a fixed prior, as ours)")
    objective: str = setting("dreg_looser", range=one_of("dreg_looser", "iwae_looser"), doc="MMVAEConfig.loss")


@dataclass(frozen=True)
class MMVAEPlusConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="MMVAEPlusConfig.beta (None: the recipe's)")
    K: int = setting(1, range=gt(0), doc="MMVAEPlusConfig.K: importance samples per expert")
    w_dim: int = setting(32, range=gt(0), doc="MMVAEPlusConfig.modalities_specific_dim: size of each w_m")
    objective: str = setting("iwae_looser", range=one_of("dreg_looser", "iwae_looser"), doc="MMVAEPlusConfig.loss")


@dataclass(frozen=True)
class JMVAEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="JMVAEConfig.beta: β of the joint KL (None: the recipe's)")
    alpha: float = setting(0.1, range=ge(0), doc="JMVAEConfig.alpha: weight of the unimodal-to-joint KL terms")


@dataclass(frozen=True)
class MVTCAEConfig(Config):
    beta: float | None = inherit("beta", range=ge(0), doc="MVTCAEConfig.beta: weight of the KL sum (None: the recipe's)")
    alpha: float = setting(0.1, range=ge(0), doc="MVTCAEConfig.alpha: weight of the total-correlation ratio")


# ---------------------------------------------------------------- our networks behind MultiVae's interfaces
def interfaces():
    """MultiVae's base classes and the wrappers of our networks (defined on first use: MultiVae is optional)."""
    from multivae.models.nn.base_architectures import BaseDecoder, BaseEncoder, BaseMultilatentEncoder
    from pythae.models.base.base_utils import ModelOutput

    class OurEncoder(BaseEncoder):
        """One of our encoders (x -> mu, logvar) as a MultiVae encoder."""

        def __init__(self, net, latent_dim: int):
            super().__init__()
            self.net, self.latent_dim = net, latent_dim

        def forward(self, x: Tensor):
            mu, logvar = self.net(x)
            return ModelOutput(embedding=mu, log_covariance=logvar)

    class OurSplitEncoder(BaseMultilatentEncoder):
        """MMVAE+'s: one of our encoders of width D_w + D_z, its heads split into (w, z) (as our mmvae+)."""

        def __init__(self, net, w_dim: int, z_dim: int):
            super().__init__()
            self.net, self.latent_dim, self.style_dim = net, z_dim, w_dim

        def forward(self, x: Tensor):
            loc, h = self.net(x)  # (B, D_w + D_z), w first
            Dw = self.style_dim
            return ModelOutput(embedding=loc[:, Dw:], log_covariance=h[:, Dw:],
                               style_embedding=loc[:, :Dw], style_log_covariance=h[:, :Dw])

    class OurDecoder(BaseDecoder):
        """One of our decoders (z -> likelihood mean) as a MultiVae decoder."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, z: Tensor):
            return ModelOutput(reconstruction=self.net(z))

    return OurEncoder, OurSplitEncoder, OurDecoder, ModelOutput


def multivae_model(name: str, spec, p, config):
    """MultiVae's `name` on our networks, the recipe p's latent size and likelihoods, and `config`'s settings."""
    import multivae.models as mv

    OurEncoder, OurSplitEncoder, OurDecoder, _ = interfaces()
    mods, D = spec.names, p.latent_dim
    for m in spec.modalities:
        if m.likelihood not in LIKELIHOODS:
            raise ProtocolError(f"multivae/{name}: modality {m.name} has a {m.likelihood} likelihood; the adapter maps "
                                f"only {', '.join(LIKELIHOODS)}")
    common = dict(n_modalities=len(mods), latent_dim=D, input_dims={m.name: tuple(m.shape) for m in spec.modalities},
                  uses_likelihood_rescaling=False,
                  decoders_dist={m.name: LIKELIHOODS[m.likelihood] for m in spec.modalities},
                  decoder_dist_params={m.name: {"scale": p.likelihood_scale} for m in spec.modalities
                                       if m.likelihood == "laplace"})

    def nets(z_dim: int, dec_dim: int | None = None):
        enc = {m.name: OurEncoder(make_backbones(m, z_dim)[0], z_dim) for m in spec.modalities}
        dec = {m.name: OurDecoder(make_backbones(m, dec_dim or z_dim)[1]) for m in spec.modalities}
        return enc, dec

    if name == "mvae":
        return mv.MVAE(mv.MVAEConfig(**common, beta=config.beta, use_subsampling=config.subsets > 0,
                                     k=config.subsets, warmup=0), *nets(D))
    if name == "mopoe":
        return mv.MoPoE(mv.MoPoEConfig(**common, beta=config.beta), *nets(D))
    if name == "mmvae":
        return mv.MMVAE(mv.MMVAEConfig(**common, beta=config.beta, K=config.K, learn_prior=config.learn_prior,
                                       prior_and_posterior_dist=config.posterior, loss=config.objective), *nets(D))
    if name == "mmvaeplus":
        Dw = config.w_dim
        enc = {m.name: OurSplitEncoder(make_backbones(m, Dw + D)[0], Dw, D) for m in spec.modalities}
        dec = {m.name: OurDecoder(make_backbones(m, D + Dw)[1]) for m in spec.modalities}  # MultiVae feeds (z, w)
        cfg = mv.MMVAEPlusConfig(**common, beta=config.beta, K=config.K, modalities_specific_dim=Dw,
                                 prior_and_posterior_dist="laplace_with_softmax", learn_shared_prior=False,
                                 learn_modality_prior=True, reconstruction_option="joint_prior", loss=config.objective)
        return mv.MMVAEPlus(cfg, enc, dec)
    if name == "jmvae":  # its joint encoder: MultiVae's default, copies of our encoders + an MLP
        return mv.JMVAE(mv.JMVAEConfig(**common, beta=config.beta, alpha=config.alpha, warmup=0), *nets(D))
    if name == "mvtcae":
        return mv.MVTCAE(mv.MVTCAEConfig(**common, beta=config.beta, alpha=config.alpha), *nets(D))
    raise ProtocolError(f"multivae/{name}: not adapted; adapted: {', '.join(MODELS)}")


# ---------------------------------------------------------------- the contract on a MultiVae model
class MultiVaeModel(MultimodalVAE):
    """A MultiVae model behind our contract (see the module docstring for the mapping)."""

    stages = ("vae",)
    name = ""  # MultiVae's model, set per subclass

    def __init__(self, spec, protocol, config):
        super().__init__(spec, protocol, config)
        self.mv = multivae_model(self.name, spec, protocol, config)

    @property
    def bound_name(self) -> str:
        """What test_nll holds: MultiVae's training objective (MVAE's: the joint, unimodal and sampled-subset ELBOs
        summed; MMVAE's: its DReG surrogate), not the joint ELBO our models name "elbo": a bound is ranked only
        against one of the same name."""
        return f"multivae_{self.name}_objective"

    def dataset(self, x: dict[str, Tensor]):
        """MultimodalBaseDataset(data=x), absent modalities as zeros: MultiVae conditions only on `cond_mod`, but
        some of its models encode every modality first (MoPoE's `inference`) and then keep the subset's product."""
        from multivae.data.datasets.base import MultimodalBaseDataset

        B, like = next(iter(x.values())).shape[0], next(iter(x.values()))
        full = {m.name: x[m.name] if m.name in x else like.new_zeros((B, *m.shape)) for m in self.spec.modalities}
        return MultimodalBaseDataset(data=full)

    @contextlib.contextmanager
    def keeping_mode(self):
        """MultiVae's encode/decode/predict call eval(): put our training flag back afterwards."""
        was = self.training
        self.mv.device = self.device  # where MultiVae's generate_from_prior puts its samples
        try:
            yield
        finally:
            self.train(was)

    def loss(self, batch, stage="vae"):
        out = self.mv(self.dataset(batch))
        B = next(iter(batch.values())).shape[0]
        logs = {k: torch.as_tensor(v).detach().float() for k, v in (out.metrics or {}).items()
                if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)}  # its scalar metrics
        return out.loss_sum / B, logs

    def negative_bound(self, batch):
        """The batch mean of MultiVae's objective for every sample (MultiVae returns no per-sample value), computed
        with gradients on: MMVAE's and MMVAE+'s DReG objective registers gradient hooks."""
        with torch.enable_grad():
            value, _ = self.loss(batch, "vae")
        return value.detach().expand(next(iter(batch.values())).shape[0])

    def encode(self, x):
        names = self.check_subset(x)
        with self.keeping_mode():
            return self.mv.encode(self.dataset(x), cond_mod=names, return_mean=True).z

    def decode(self, z, modalities: Iterable[str] | None = None):
        _, _, _, ModelOutput = interfaces()
        mods = list(modalities or self.modalities)
        if self.name == "mmvaeplus":  # its decoders read (z, w): w ~ MultiVae's prior on it
            with self.keeping_mode():
                w = self.mv.generate_from_prior(z.shape[0]).z.reshape(z.shape[0], -1)[:, self.protocol.latent_dim:]
            z = torch.cat([z, w], -1)
        with self.keeping_mode():
            out = self.mv.decode(ModelOutput(z=z, one_latent_space=True), mods)
        return {m: out[m] for m in mods}

    def sample(self, n):
        with self.keeping_mode():
            prior = self.mv.generate_from_prior(n)
            prior.z = prior.z.reshape(n, -1)  # MultiVae squeezes n = 1
            out = self.mv.decode(prior, "all")
        return {m: out[m] for m in self.modalities}

    def generate(self, x_subset, targets):
        names, targets = self.check_subset(x_subset), list(targets)
        with self.keeping_mode():
            out = self.mv.predict(self.dataset(x_subset), cond_mod=names, gen_mod=targets)
        return {t: out[t] for t in targets}


# ---------------------------------------------------------------- registration
MODELS = {  # our name -> (MultiVae's class, its config, the paper)
    "mvae": ("MVAE", MVAEConfig, "Wu & Goodman, NeurIPS 2018"),
    "mopoe": ("MoPoE", MoPoEConfig, "Sutter et al., ICLR 2021"),
    "mmvae": ("MMVAE", MMVAEConfig, "Shi et al., NeurIPS 2019"),
    "mmvaeplus": ("MMVAEPlus", MMVAEPlusConfig, "Palumbo et al., ICLR 2023"),
    "jmvae": ("JMVAE", JMVAEConfig, "Suzuki et al., 2016"),
    "mvtcae": ("MVTCAE", MVTCAEConfig, "Hwang et al., NeurIPS 2021"),
}
SMOKE = {"mmvae": {"K": 2}, "mmvaeplus": {"K": 2}}  # as our mmvae / mmvae+ smoke defaults


def card(name: str) -> str:
    cls, config, paper = MODELS[name]
    return (f"MultiVae's {cls} ({paper}) on the harness's networks and recipe, through the adapter.\n\n"
            f"Implementation: multivae.models.{cls} (PyPI multivae, Apache-2.0), not ours; settings: "
            f"{', '.join(f.name for f in config.__dataclass_fields__.values())} (multivae/{name}.<key>).\n"
            "How the contract maps onto it, and what is fixed: shala_bench/plugins/multivae_adapter.py.")


def entry(name: str) -> ModelEntry:
    cls = type(f"MultiVae{MODELS[name][0]}", (MultiVaeModel,), {"name": name, "__doc__": card(name)})
    defaults = {"smoke": SMOKE[name]} if name in SMOKE else {}
    return ModelEntry(f"multivae/{name}", cls, card(name), config=MODELS[name][1], config_defaults=defaults)


@hookimpl
def shala_bench_register_models():
    return [] if missing() else [entry(name) for name in MODELS]


@hookimpl
def shala_bench_unavailable():
    why = missing()
    return f"multivae/* models not registered: {why} ({INSTALL})" if why else None
