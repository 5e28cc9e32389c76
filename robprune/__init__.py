"""robprune: config-driven experiment runner for robustness-aware compression of neural networks."""
import os

__version__ = "0.1.0"

# The Hugging Face hub is offline unless the environment says otherwise (HF_HUB_OFFLINE=0): its
# libraries read these once, at their own import, so they are set before anything imports them.
# Pretrained text models and timm weights from the hub then need HF_HUB_OFFLINE=0 and the internet once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # robprune draws its own progress (rich)

# conf/hydra/launcher/joblib.yaml documents the joblib launcher's options under the plugin's own name, so
# Hydra validates it against the plugin's schema (wanted: typos in launcher options fail) and warns that
# this matching by name is deprecated; it is how Hydra 1.3 (robprune's pin) works, so say nothing.
import warnings  # noqa: E402

warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")
# timm 1.0.9 (what the robustbench extra pins) decorates one of its models with torch.jit.interface at import,
# which torch >= 2.9 deprecates with a FutureWarning on stderr; nothing a robprune user can act on.
warnings.filterwarnings("ignore", message=r"`torch.jit.interface` is deprecated", category=FutureWarning)
