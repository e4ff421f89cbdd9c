"""open_clip, imported without its optional transformers integration.

open_clip imports transformers, when it is installed, for CoCa caption generation and Hugging Face text
towers; neulig uses neither, and that import costs about 2 s of CPU in every process. The first import
of open_clip through this module hides transformers for that one import (open_clip then records it as
absent); transformers itself stays importable afterwards. Import open_clip as
``from neulig.models.openclip import open_clip``.
"""
import sys

if "open_clip" not in sys.modules and "transformers" not in sys.modules:
    sys.modules["transformers"] = None  # type: ignore[assignment]  # makes `import transformers` fail fast
    try:
        import open_clip
    finally:
        del sys.modules["transformers"]
import open_clip  # noqa: E402

__all__ = ["open_clip"]
