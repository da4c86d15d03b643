"""The neutral base: every field cifar_jax reads, every option off. Recipes start here.

  python -m cifar_jax.main --workdir=/tmp/base --config=experiments/base.py

trains the tutorial's network on tfds CIFAR-10 with plain SGD at a constant
learning rate: no augmentation (the full 32x32 image, per-image
standardisation), no L2 penalty or weight decay, no EMA, no lookahead, no
test-time augmentation. A recipe (`cifar10.py`, `airbench94.py`) imports this
file and sets what it uses; `cifar_jax.config.validation` checks every field here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.source = 'tfds'  # tfds | image_folder | synthetic
  config.dataset.name = 'cifar10'  # tfds name
  config.dataset.data_dir = None  # tfds data_dir; None: ~/tensorflow_datasets
  config.dataset.path = ''  # image folder or .tar.gz of one (source=image_folder)
  # Another image folder (or archive) to take eval_split from; '': the same as path.
  config.dataset.eval_path = ''
  config.dataset.train_split = 'train'
  config.dataset.eval_split = 'test'
  # Decoded splits are cached here, memory-mapped (keyed by the source's files and the image
  # format below); '' disables: splits are then held in memory.
  config.dataset.cache_dir = '~/.cache/cifar_jax'
  # Every image made one size when the split is loaded (cifar_jax/data/image_format.py): 0 keeps the
  # data's (which must then be one size), N is N x N, (height, width). Antialiased resizing:
  # bilinear | bicubic | lanczos | box; another aspect ratio is fitted by
  # crop (cover, cut the centre) | pad (fit, centre on black) | stretch.
  # (Any type: --config.dataset.image_size=64 and --config.dataset.image_size='(64,48)' both work.)
  config.dataset.image_size = ml_collections.FieldReference(0, field_type=object)
  config.dataset.resize_method = 'bilinear'
  config.dataset.resize_aspect = 'crop'
  config.dataset.channels = 0  # 0: the data's; 1 (grey) or 3 (colour) converts
  # Where the training split lives (cifar_jax/training/placement.py): device (a copy on every
  # device, batches gathered there) | host (host memory or the memory-mapped cache; each call's
  # batches gathered on the host and copied ahead of use) | auto (device when the split takes
  # at most a quarter of a device's memory). The same parameters either way, bit for bit.
  config.dataset.placement = 'auto'
  # Only for source=synthetic.
  config.dataset.seed = 0
  config.dataset.synthetic_train_size = 0
  config.dataset.synthetic_test_size = 0
  config.dataset.synthetic_num_classes = 10
  config.dataset.synthetic_image_size = 32

  # What the network sees: a crop_size crop (random in training, central in evaluation; 0: the
  # whole image), then per_image_standardization | channel_normalization ((x / 255 - mean) / std
  # per channel). eval_resize > 0 first resizes each evaluation image (antialiased) so that its
  # shorter side has that many pixels: the ImageNet recipes' crop_size / 0.875 with
  # random_resized_crop.
  config.crop_size = 32
  config.eval_resize = 0
  config.preprocess = 'per_image_standardization'
  config.channel_mean = (0.4914, 0.4822, 0.4465)  # CIFAR-10 training split, 0-1 scale
  config.channel_std = (0.2470, 0.2435, 0.2616)
  config.augment = ml_collections.ConfigDict()
  config.augment.translate = 0  # pixels of padding before the random crop
  # reflect (airbench's) | constant (zeros, black: torchvision's RandomCrop(padding=...)).
  config.augment.padding_mode = 'reflect'
  # Instead of the plain random crop: a box of a random share of the image's area (crop_scale)
  # and aspect ratio (crop_ratio, log-uniform), resized to crop_size (antialiased), as the
  # ImageNet recipes do.
  config.augment.random_resized_crop = False
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.crop_ratio = (3 / 4, 4 / 3)
  config.augment.flip_left_right = False
  config.augment.alternating_flip = False  # random in epoch 0, then opposite every epoch
  config.augment.max_brightness_delta = 0.0  # 0-255 scale; 0: off
  config.augment.random_contrast = False
  config.augment.contrast_lower = 0.2
  config.augment.contrast_upper = 1.8
  # Augmentations outside cifar_jax, 'package.module:Name', applied in order after those above;
  # each adds its own fields to config.augment (cifar_jax/data/augmentations.py).
  config.augment.extra = ()

  # A model by name (cifar_jax.models.MODELS: tutorial_cnn, airbench94, resnet, preact_resnet,
  # wide_resnet), or 'package.module:ClassName' for one outside cifar_jax (docs/development.md),
  # and its fields.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'tutorial_cnn'
  config.model.conv_features = 64
  config.model.local3_features = 384
  config.model.local4_features = 192
  # fast | reference: the same function and gradients; 'reference' is the plain
  # reduce-window / pow formulation (slower on CPUs), kept for checking.
  config.model.formulation = 'fast'
  # float32 | bfloat16: activations, convolutions and matmuls. Parameters, optimizer
  # state, EMA, BatchNorm statistics and the loss stay float32 either way.
  config.model.dtype = 'float32'
  # Training images a data-dependent initialisation (airbench's whitening) sees.
  config.model_init_examples = 5000

  config.num_devices = -1  # -1: every local device
  config.per_device_batch_size = 128
  # R independent runs in one program, replica r seeded with seed + r (initialisation, data
  # order, augmentation): every state leaf gains a leading replica axis; the evaluator reports
  # each replica and their mean with its 95% confidence interval. How the replicas run inside a
  # device call: loop (one after another; the faster on CPUs, docs/replicas.md) | vmap
  # (batched: a convolution over the replicas' weights becomes a grouped one).
  config.num_replicas = 1
  config.replica_execution = 'loop'
  # A sweep (cifar_jax/core/sweeps.py, docs/replicas.md): fields that enter the step as numbers
  # (learning_rate, weight_decay, label_smoothing, ema.decay, ...), nested as the config, each
  # with a tuple of values, e.g. config.sweep.learning_rate = (0.05, 0.1, 0.2). Every point
  # (cross: every combination; zip: the i-th values together) trains num_replicas seeds, all in
  # one program on the replica axis. Empty: a single run.
  config.sweep = ml_collections.ConfigDict()
  config.sweep_mode = 'cross'
  config.num_train_steps = 10_000
  # > 0: train this many epochs instead; num_train_steps is then ceil(epochs x steps per
  # epoch), set when the training split is loaded (its size and the global batch decide).
  config.num_train_epochs = 0.0
  # Training steps per device call (lax.scan inside the mapped step): k > 1 saves per-step
  # dispatch for small networks on fast devices; results are the same for any k.
  config.steps_per_call = 1
  # (start, count): a jax.profiler trace of steps start+1..start+count in WORKDIR/profile.
  config.profile_steps = ()

  # The optimizer (cifar_jax/training/optimizers.py): sgd | momentum | muon | frozen, its peak
  # learning rate, and the schedule that scales it, chosen by name with that name's fields:
  #   constant | staircase_exponential (decay_factor, epochs_per_decay) | warmup_cosine
  #   (warmup_epochs) | linear_warmup_decay (warmup_fraction, start_scale, end_scale) |
  #   piecewise_constant (boundaries_epochs, decay_factor: PyTorch's MultiStepLR)
  config.optimizer = 'sgd'
  config.learning_rate = 0.1
  config.momentum = 0.9  # momentum and muon
  config.nesterov = False
  # plain | decoupled (per 1024 examples, airbench94) | pytorch (weight_decay as PyTorch's SGD
  # and optax.add_decayed_weights: g += weight_decay * p; the ResNet recipes).
  config.hyperparameter_form = 'plain'

  config.schedule = ml_collections.ConfigDict({'name': 'constant'})
  # Weight decay inside the optimizer (0: none), in the units hyperparameter_form says: plain,
  # per example of the global batch; decoupled, per 1024 examples; pytorch, PyTorch's.
  config.weight_decay = 0.0
  # name -> ConfigDict(params=(glob patterns,), optimizer=..., learning_rate=..., ...).
  config.optimizer_groups = ml_collections.ConfigDict()
  config.muon = ml_collections.ConfigDict()
  config.muon.ns_steps = 3
  config.muon.ns_coefficients = (3.4445, -4.7750, 2.0315)
  config.muon.eps = 1e-7
  config.muon.renormalize = True  # weights to norm sqrt(out_channels) before each step

  # The loss: softmax cross-entropy, its mean or sum over the global batch, label smoothing,
  # and the tutorial's L2 penalty: l2_penalty * l2_loss of these modules' kernels.
  config.label_smoothing = 0.0
  config.loss_reduction = 'mean'  # mean | sum
  config.l2_penalty = 0.0
  config.l2_penalty_modules = ()

  # airbench's lookahead: every k steps (0: never) slow += (1 - d) (net - slow), net = slow,
  # d = decay_base * (step / num_train_steps) ** decay_power; the last step ends on slow.
  config.lookahead = ml_collections.ConfigDict()
  config.lookahead.every_steps = 0
  config.lookahead.decay_base = 0.95**5
  config.lookahead.decay_power = 3.0

  config.ema = ml_collections.ConfigDict()
  config.ema.kind = 'none'  # tensorflow | optax_debiased | none
  config.ema.decay = 0.9999

  # Multi-process runs: a process whose step (or save) does not finish for this
  # long -- a peer died or stopped answering -- ends with an error (0: never).
  config.collective_timeout_secs = 300.0

  # Cadences: what the trainer does every so many steps (and at the last step).
  config.log_every_steps = 10
  config.checkpoint_every_steps = 1000
  # Also save when this many seconds passed since the last save or the trainer's start
  # (0: by steps only): a kill without warning then loses at most this much work.
  config.checkpoint_every_secs = 600.0
  config.keep_checkpoints = 5
  # Compiled XLA programs are kept here across restarts (relative: under WORKDIR; '': off).
  config.compilation_cache_dir = 'compilation_cache'
  config.histogram_every_steps = 1000
  config.histogram_sample_size = 64
  config.input_image_grid_size = 32

  # --mode=train_and_eval scores in the training process every this many steps
  # (0: only the final step); --mode=eval runs the evaluator as its own process.
  config.eval_every_steps = 1000
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 1000  # global; independent of training
  config.eval.headline = 'raw'  # ema | raw: which parameters the log line leads with
  config.eval.tta = 'none'  # none | mirror | mirror_translate (airbench's tta_level 0 / 1 / 2)
  config.eval.platform = ''  # '' (default backend), 'cpu', 'gpu': where the evaluator runs
  config.eval.poll_secs = 10.0  # how often the evaluator looks for new checkpoints
  # It stops after this long without a new checkpoint (and waits this long for WORKDIR).
  config.eval.timeout_secs = 3600.0
  config.eval.run_once = False  # score the latest checkpoint and exit
  config.eval.num_misclassified_images = 24  # in the TensorBoard grid
  # Metrics scored beside precision@1 and the loss (cifar_jax/evaluation/metrics.py), by name or
  # 'package.module:Name' from outside: ('top5_precision',).
  config.eval.metrics = ()
  # Equal-width bins of the top-label confidence: the ECE ('ece') and the reliability diagram.
  config.eval.calibration_bins = 15
  # Named evaluation sets scored by the evaluator beside the run's own split
  # (cifar_jax/evaluation/eval_sets.py, docs/evaluation.md): name -> {fields}.
  config.eval.sets = ml_collections.ConfigDict()
  return config
