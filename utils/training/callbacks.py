"""Training/validation hooks: named events that train.py and val.py fire and user code can subscribe to."""
from __future__ import annotations

from collections.abc import Callable

HOOKS = (
    "on_pretrain_routine_start", "on_pretrain_routine_end",
    "on_train_start", "on_train_epoch_start", "on_train_batch_start", "optimizer_step", "on_before_zero_grad",
    "on_train_batch_end", "on_train_epoch_end",
    "on_val_start", "on_val_batch_start", "on_val_image_end", "on_val_batch_end", "on_val_end",
    "on_fit_epoch_end", "on_model_save", "on_train_end", "on_params_update", "teardown",
)


class Callbacks:
    """Registry of callables per hook name (the YOLOv5 event names); run(hook, ...) calls them in order."""

    def __init__(self):
        self._callbacks: dict[str, list[dict]] = {k: [] for k in HOOKS}
        self.stop_training = False  # a callback may set this to end training after the current epoch

    def register_action(self, hook: str, name: str = "", callback: Callable | None = None) -> None:
        """Subscribe callback to hook; an unknown hook name is an error listing the known ones."""
        actions = self._actions(hook)
        if not callable(callback):
            raise ValueError(f"callback for '{hook}' must be callable, got {type(callback).__name__}")
        actions.append({"name": name, "callback": callback})

    def get_registered_actions(self, hook: str | None = None):
        return self._actions(hook) if hook else self._callbacks

    def run(self, hook: str, *args, **kwargs) -> None:
        """Call every callback registered for hook with the given arguments."""
        for entry in self._actions(hook):
            entry["callback"](*args, **kwargs)

    def _actions(self, hook: str) -> list[dict]:
        # a misspelt hook would otherwise never fire, silently
        if hook not in self._callbacks:
            raise ValueError(f"unknown callback hook '{hook}' (known: {', '.join(self._callbacks)})")
        return self._callbacks[hook]
