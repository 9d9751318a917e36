"""Audio metrics in numpy: log-mel spectra and sound onsets.

* log-mel: the channels are averaged to mono (int16 → [-1, 1]), a Hann-windowed STFT with
  ``n_fft`` = the power of two nearest 25 ms and hop ``n_fft/2`` is taken, its power is
  projected on 40 HTK-mel triangular filters (0 Hz – Nyquist), and expressed in dB with a
  floor of −80 dB. ``logmel_distance`` is the mean absolute difference in dB between two
  clips of the same length, over time frames and mel bands. Silence scores the distance of
  an all-floor spectrogram, reported beside the model's value.
* onsets, per step: the step's energy ``e[t] = 10·log10(mean(x²))`` dBFS (floor −100);
  step ``t`` is an onset when ``e[t] ≥ −45`` dBFS and ``e[t] − e[t−1] ≥ 6`` dB.
  ``audio_onset_within_1`` is the fraction of ground-truth onsets for which the generated
  audio has an onset within ±1 step.
* onsets by cause: a real onset at step ``t`` is *after attack* when ``attack`` was held in one
  of the ``CAUSE_STEPS`` actions before it (the action at ``t-1`` made step ``t``), else *after
  use* likewise, else *other* (monsters, doors closing, pickups: nothing the actions announce).
  Reported beside the total (``details.audio.by_cause``): what an action-conditioned model can
  be asked to reproduce in free running is the first two.
* missed onsets, by what the generated sound does there (``misses``, also per cause):
  ``shifted`` — it has an onset 2–4 steps away (wrong timing); else ``silent`` — it stays below
  −45 dBFS at the step and the one before (no sound at all); else ``no_rise`` — it is loud
  there but does not rise 6 dB (a sound smeared over the steps).
"""

from __future__ import annotations

import numpy as np

N_MELS = 40
LOGMEL_FLOOR_DB = -80.0
ONSET_MIN_DB = -45.0
ONSET_RISE_DB = 6.0
CAUSE_STEPS = 5     # "an ATTACK is followed by a sound onset within 4 tics": the action at t-1 and the 4 before
CAUSES = ("attack", "use", "other")
MISSES = ("shifted", "silent", "no_rise")


def onset_causes(buttons: np.ndarray, names: "list[str] | tuple[str, ...]", first: int, length: int) -> np.ndarray:
    """Cause index (into ``CAUSES``) of steps ``first .. first+length-1`` of an episode whose
    actions are ``buttons`` (T, NB): the step's audio follows the actions before it."""
    b = np.asarray(buttons)
    out = np.full(length, CAUSES.index("other"), np.int64)
    for cause in ("use", "attack"):  # attack wins when both were held
        if cause not in names:
            continue
        col = b[:, list(names).index(cause)].astype(bool)
        for k in range(length):
            t = first + k
            if col[max(0, t - CAUSE_STEPS):t].any():
                out[k] = CAUSES.index(cause)
    return out


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = N_MELS, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters, ``(n_mels, n_fft // 2 + 1)``, each normalised to unit area."""
    fmax = fmax or sample_rate / 2
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / max(mid - lo, 1e-9)
        down = (hi - freqs) / max(hi - mid, 1e-9)
        fb[m] = np.maximum(0.0, np.minimum(up, down))
    area = fb.sum(axis=1, keepdims=True)
    return fb / np.where(area > 0, area, 1.0)


def _n_fft(sample_rate: int) -> int:
    return int(2 ** round(np.log2(0.025 * sample_rate)))


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(..., S, C)`` int16 → flat float32 mono in [-1, 1] (steps concatenated)."""
    a = np.asarray(audio, np.float32) / 32768.0
    return a.reshape(-1, a.shape[-1]).mean(axis=1)


def log_mel(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel spectrogram in dB, ``(frames, n_mels)``, of ``(..., S, C)`` int16 audio."""
    x = to_mono(audio)
    n_fft = _n_fft(sample_rate)
    hop = n_fft // 2
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    n = 1 + (len(x) - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft)[None], axis=1)) ** 2 / n_fft  # (frames, bins)
    mel = spec @ mel_filterbank(sample_rate, n_fft).T
    return np.maximum(10.0 * np.log10(np.maximum(mel, 1e-30)), LOGMEL_FLOOR_DB)


def logmel_distance(generated: np.ndarray, real: np.ndarray, sample_rate: int) -> float:
    """Mean |Δ| in dB between the log-mel spectrograms of two equally long clips."""
    return float(np.abs(log_mel(generated, sample_rate) - log_mel(real, sample_rate)).mean())


def step_energy_db(audio: np.ndarray) -> np.ndarray:
    """Per-step energy in dBFS of ``(T, S, C)`` int16 audio, ``(T,)``."""
    a = np.asarray(audio, np.float32) / 32768.0
    return 10.0 * np.log10(np.maximum((a * a).reshape(len(a), -1).mean(axis=1), 1e-10))


def onsets(energy_db: np.ndarray, prev_db: float) -> np.ndarray:
    """Onset flags ``(T,)`` from per-step energies; ``prev_db`` is the step before the first."""
    e = np.asarray(energy_db, np.float64)
    prev = np.concatenate([[prev_db], e[:-1]])
    return (e >= ONSET_MIN_DB) & (e - prev >= ONSET_RISE_DB)


def miss_kind(t: int, g: np.ndarray, gen_db: np.ndarray, prev_db: float) -> str:
    """What the generated sound does at a real onset ``t`` it missed (see ``MISSES``); ``g``: the
    generated onsets' steps."""
    if np.any((np.abs(g - t) >= 2) & (np.abs(g - t) <= 4)):
        return "shifted"
    before = gen_db[t - 1] if t > 0 else prev_db
    return "silent" if max(gen_db[t], before) < ONSET_MIN_DB else "no_rise"


def onset_matches(real_on: np.ndarray, gen_on: np.ndarray, tol: int = 1) -> tuple[int, int, int, int]:
    """(real onsets, of which matched within ±tol, generated onsets, of which matched)."""
    r, g = np.nonzero(real_on)[0], np.nonzero(gen_on)[0]
    hit_r = sum(1 for t in r if np.any(np.abs(g - t) <= tol))
    hit_g = sum(1 for t in g if np.any(np.abs(r - t) <= tol))
    return len(r), hit_r, len(g), hit_g


class AudioScorer:
    """Accumulates onset and log-mel scores over rollouts of one model."""

    def __init__(self, sample_rate: int):
        self.sr = sample_rate
        self.n_real = self.hit_real = self.n_gen = self.hit_gen = 0
        self.dist: list[float] = []
        self.dist_silence: list[float] = []
        self.per_rollout: list[tuple[int, int]] = []  # (real onsets, of which reproduced) of each add()
        self.by_cause = {c: [0, 0] for c in CAUSES}  # real onsets, of which reproduced within ±1
        self.misses = {c: dict.fromkeys(MISSES, 0) for c in CAUSES + ("all",)}  # missed onsets by kind

    def add(self, context_audio: np.ndarray, real: np.ndarray, generated: np.ndarray | None,
            causes: np.ndarray | None = None) -> None:
        """One rollout: last context step's audio ``(S, C)``, real and generated ``(L, S, C)``;
        ``causes`` (L,) from :func:`onset_causes`, or None."""
        if generated is None:  # a model without sound is scored as silence
            generated = np.zeros_like(real)
        prev = float(step_energy_db(context_audio[None])[0])
        r_on = onsets(step_energy_db(real), prev)
        g_db = step_energy_db(generated)
        g_on = onsets(g_db, prev)
        nr, hr, ng, hg = onset_matches(r_on, g_on)
        g = np.nonzero(g_on)[0]
        for t in np.nonzero(r_on)[0]:
            hit = bool(np.any(np.abs(g - t) <= 1))
            cause = CAUSES[int(causes[t])] if causes is not None else None
            if cause is not None:
                self.by_cause[cause][0] += 1
                self.by_cause[cause][1] += int(hit)
            if not hit:
                kind = miss_kind(int(t), g, g_db, prev)
                self.misses["all"][kind] += 1
                if cause is not None:
                    self.misses[cause][kind] += 1
        self.per_rollout.append((nr, hr))
        self.n_real += nr
        self.hit_real += hr
        self.n_gen += ng
        self.hit_gen += hg
        self.dist.append(logmel_distance(generated, real, self.sr))
        self.dist_silence.append(logmel_distance(np.zeros_like(real), real, self.sr))

    def result(self) -> dict[str, float | int | None]:
        return {
            "onset_within_1": self.hit_real / self.n_real if self.n_real else None,
            "onset_precision": self.hit_gen / self.n_gen if self.n_gen else None,
            "real_onsets": self.n_real,
            "generated_onsets": self.n_gen,
            "logmel_dist": float(np.mean(self.dist)) if self.dist else None,
            "logmel_dist_silence": float(np.mean(self.dist_silence)) if self.dist_silence else None,
            "by_cause": {c: {"real_onsets": n, "within_1": h / n if n else None, "misses": self.misses[c]}
                         for c, (n, h) in self.by_cause.items()},
            "misses": self.misses["all"],
        }
