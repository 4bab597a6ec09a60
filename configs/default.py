"""Every config key, with its default and what it means.

Experiment configs start from `get_config()` here and only override keys: the
returned config is locked, so a misspelt key is an error, not a silent new key.
"""
import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  c.objective = "meanflow"   # "meanflow" (average velocity u) | "flow_matching" (v)
  c.seed = 0                 # seeds init, data order and every step's noise and times

  c.data = ml_collections.ConfigDict()
  c.data.path = ""           # .npy float array [N, D]; "" = the built-in mixture below
  c.data.mixture = "ring8"   # built-in: "ring8" (8 modes on a circle of radius 2, std 0.2),
                             # "gaussian" (N((1, -1), 0.5^2 I))

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"       # registry name (meanflow_jax.models.available())
  c.model.mlp = ml_collections.ConfigDict()
  c.model.mlp.width = 256
  c.model.mlp.depth = 4      # residual blocks
  c.model.mlp.time_dim = 128  # sinusoidal features per time input
  c.model.mlp.time_scale = 1000.0  # t is multiplied by this before the sinusoids

  c.time = ml_collections.ConfigDict()
  c.time.distribution = "logit_normal"  # "logit_normal" | "uniform"
  c.time.mu = -0.4           # logit-normal mean (paper, ImageNet)
  c.time.sigma = 1.0         # logit-normal std
  c.time.ratio_r_neq_t = 0.25  # fraction of samples with r != t (MeanFlow only)

  c.loss = ml_collections.ConfigDict()
  c.loss.p = 1.0             # adaptive weight 1/(err + c)^p; 0 = plain squared error
  c.loss.c = 1e-3

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # "adam" | "adamw"
  c.optimizer.lr = 1e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 0  # linear warm-up from 0
  c.optimizer.schedule = "constant"  # "constant" | "cosine" (decays to 0 at train.steps)
  c.optimizer.grad_clip = 0.0  # global-norm clip; 0 = off

  c.train = ml_collections.ConfigDict()
  c.train.steps = 10_000
  c.train.batch_size = 256
  c.train.ema_decays = (0.999,)  # one EMA copy of the parameters per decay
  c.train.log_every = 100     # steps between lines of metrics.jsonl
  c.train.checkpoint_every = 2_000
  c.train.max_to_keep = 3

  c.sample = ml_collections.ConfigDict()
  c.sample.params = "ema"     # "ema" (first EMA copy) | "raw" for sampling and evaluation
  c.sample.method = "euler"   # flow-matching solver: "euler" | "heun"
  c.sample.num_plot = 4_000   # points in the scatter PNG

  c.lock()
  return c
