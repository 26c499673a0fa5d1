"""A denoiser wrapper that keeps its calls (shared by the continuous-time sampler tests)."""


class Recorder:
    """Wraps a denoiser ``(x, t) -> x0_hat`` and keeps every call's (x, t) in order."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, *cond):
        self.calls.append((x.clone(), t.clone()))
        return self.fn(x, t)
