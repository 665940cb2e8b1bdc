"""Record a video of a trained agent playing greedily.

    python visualize.py                                  # models/CartPole-v1.weights.h5 -> videos/CartPole-v1.mp4
    python visualize.py --episodes 3 --overlay --gif     # Q-values drawn on every frame, and a GIF
    python visualize.py --weights models/run.weights.h5 --out videos/run.mp4

The network and the environment are rebuilt from the description that `train.py` saves inside the
weights file, so nothing needs repeating. Works headless. The weights file is only read.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RecordVideo

from agent_files import load_agent, read_description
from checkpoints import unfinished_run_note
from common import (
    OneLineErrorParser,
    UserError,
    WriteError,
    atomic_write,
    ensure_writable_dir,
    run_cli,
    seed_argument,
)
from environments import make_env

if TYPE_CHECKING:
    from dqn_agent import DeepQLearning

DEFAULT_WEIGHTS = Path("models/CartPole-v1.weights.h5")

# What the actions of the classic-control environments do; others are shown as "action i".
ACTION_NAMES = {
    "CartPole": ["push left", "push right"],
    "Acrobot": ["torque -1", "torque 0", "torque +1"],
    "MountainCar": ["push left", "no push", "push right"],
    "LunarLander": ["do nothing", "left engine", "main engine", "right engine"],
}


# MinAtar's full action set, in its own order (minatar.environment.Environment); each game uses some of them.
MINATAR_ACTIONS = ["no-op", "left", "up", "right", "down", "fire"]


def action_names(env: gym.Env, env_id: str, num_actions: int) -> list[str]:
    """Labels for the actions: ALE's own meanings for Atari, MinAtar's by its action set, the classic ones by
    name, else "action i"."""
    meanings = getattr(env.unwrapped, "get_action_meanings", None)
    if meanings:
        names = meanings()
    elif env_id.startswith("MinAtar/"):
        names = [MINATAR_ACTIONS[action] for action in env.unwrapped.action_set]
    else:
        names = ACTION_NAMES.get(env_id.split(":")[-1].split("-")[0], [])
    return names if len(names) == num_actions else [f"action {i}" for i in range(num_actions)]


class QValueOverlay(gym.Wrapper):
    """Adds under each rendered frame a panel with the step, the return so far, Q(s, a) of every action, and the
    greedy action: what the network sees in the state on screen and what it will do.

    The panel is light text on a dark ground, beside the game rather than over it, so that it reads on every
    game (LunarLander's black sky, MinAtar's and Atari's dark screens alike); a frame narrower than
    `MIN_WIDTH` pixels is scaled up first (Atari's 160).

    :param env: an environment with ``render_mode="rgb_array"``.
    :param q_function: Q(s, .) of one state, as a NumPy vector.
    :param names: a label for each action.
    """

    MIN_WIDTH = 320
    TEXT, CHOSEN, GROUND = (235, 235, 235), (255, 196, 0), (24, 24, 24)

    def __init__(self, env: gym.Env, q_function: Callable[[np.ndarray], np.ndarray], names: list[str],
                 distribution: Callable[[np.ndarray], np.ndarray] | None = None,
                 support: np.ndarray | None = None) -> None:
        super().__init__(env)
        self.q_function = q_function
        self.names = names
        self.distribution, self.support = distribution, support
        self.observation: np.ndarray | None = None
        self.steps = 0
        self.episode_return = 0.0
        self.font: Any = None  # loaded on the first frame, sized to it

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        self.observation, info = self.env.reset(**kwargs)
        self.steps, self.episode_return = 0, 0.0
        return self.observation, info

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.observation, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        self.episode_return += float(reward)
        return self.observation, reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        from PIL import Image, ImageDraw, ImageFont

        frame = np.asarray(self.env.render())
        scale = -(-self.MIN_WIDTH // frame.shape[1])  # an integer factor, so that pixels stay sharp
        if scale > 1:
            frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
        height, width = frame.shape[:2]
        if self.font is None:
            self.font = ImageFont.load_default(size=max(12, min(20, width // 30)))
        line_height = self.font.size + 4
        chart = 3 * line_height if self.distribution is not None else 0
        panel = line_height * (1 + len(self.names)) + 12 + chart
        panel += -(height + panel) % 16  # video encoders work on 16-pixel blocks
        image = Image.new("RGB", (width, height + panel), self.GROUND)
        image.paste(Image.fromarray(frame), (0, 0))
        draw = ImageDraw.Draw(image)
        q_values = self.q_function(self.observation)
        chosen = int(np.argmax(q_values))
        top = height + 6
        draw.text((10, top), f"step {self.steps}   return {self.episode_return:g}", fill=self.TEXT, font=self.font)
        for action, (name, q_value) in enumerate(zip(self.names, q_values, strict=True)):
            mark, color = ("> ", self.CHOSEN) if action == chosen else ("   ", self.TEXT)
            draw.text((10, top + (action + 1) * line_height), f"{mark}Q({name}) = {q_value:.3f}", fill=color,
                      font=self.font)
        if self.distribution is not None:
            self.draw_distribution(draw, self.distribution(self.observation)[chosen], width,
                                   top + (len(self.names) + 1) * line_height + 4, chart - line_height)
        return np.asarray(image)

    def draw_distribution(self, draw: Any, probabilities: np.ndarray, width: int, top: int, height: int) -> None:
        """The chosen action's return distribution as bars over the atoms, the support's ends written under it."""
        left, right = 10, width - 10
        bar = (right - left) / len(probabilities)
        tallest = max(float(probabilities.max()), 1e-9)
        draw.line((left, top + height, right, top + height), fill=self.TEXT)  # the support, under the bars
        for atom, probability in enumerate(probabilities):
            if height * probability / tallest >= 1:
                x = left + atom * bar
                draw.rectangle((x, top + height * (1 - probability / tallest), x + max(bar - 1, 1), top + height - 1),
                               fill=self.CHOSEN)
        low, high = f"{self.support[0]:g}", f"{self.support[-1]:g}"
        draw.text((left, top + height + 2), low, fill=self.TEXT, font=self.font)
        draw.text((right - draw.textlength(high, font=self.font), top + height + 2), high, fill=self.TEXT,
                  font=self.font)


# ------------------------------------------------------------------------------------ the command
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description="Record a video of a trained DQN agent playing greedily.")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                        help="a STEM.weights.h5 written by train.py")
    parser.add_argument("--episodes", type=int, default=1, help="greedy episodes to play, all in one video")
    parser.add_argument("--out", type=Path, default=None, help="the mp4 to write (default: videos/STEM.mp4)")
    parser.add_argument("--seed", type=seed_argument, default=0,
                        help="seed of the first episode; the next use seed+1, ...")
    parser.add_argument("--fps", type=int, default=None, help="frames per second (default: the environment's)")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF beside the mp4, small "
                        "enough for a README (every second frame, 300 pixels wide)")
    parser.add_argument("--overlay", action="store_true",
                        help="show the step, the return, each action's Q-value and the chosen action in a panel under "
                        "each frame")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Check the flags and the weights file's description of its agent before TensorFlow is imported."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"argument --episodes: must be positive, got {args.episodes}")
    if args.fps is not None and args.fps <= 0:
        parser.error(f"argument --fps: must be positive, got {args.fps}")
    if not args.weights.name.endswith(".weights.h5"):
        parser.error(f"argument --weights: {args.weights} is not a .weights.h5 file written by train.py")
    description = read_description(args.weights)
    env_id = description["env_id"]
    env = make_env(env_id)
    shapes = (list(env.observation_space.shape), int(env.action_space.n))
    env.close()
    if shapes != (description["observation_shape"], description["num_actions"]):
        raise UserError(f"{args.weights} does not match {env_id}: it describes observations of shape "
                        f"{description['observation_shape']} and {description['num_actions']} actions, the "
                        f"environment has {shapes[0]} and {shapes[1]}")
    if args.out is None:
        args.out = Path("videos") / (args.weights.name.removesuffix(".weights.h5") + ".mp4")
    if args.out.suffix != ".mp4":
        parser.error(f"argument --out: {args.out} must end in .mp4")
    ensure_writable_dir(args.out.parent, "--out")
    return args


def record_video(agent: DeepQLearning, env_id: str, args: argparse.Namespace) -> list[float]:
    """Play ``args.episodes`` greedy episodes into one mp4 at ``args.out``, written atomically.

    :return: each episode's return.
    """
    env = make_env(env_id, render_mode="rgb_array")
    if args.overlay:
        distribution = (lambda state: agent.return_distributions(np.asarray(state)[None])[0]) \
            if agent.config.distributional else None
        env = QValueOverlay(env, lambda state: agent.q_values(np.asarray(state)[None])[0],
                            action_names(env, env_id, agent.num_actions), distribution, agent.support)
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(dir=args.out.parent, prefix=".recording-"))
        # one recording from the first reset to close(): a finite video_length keeps it going across resets
        env = RecordVideo(env, str(folder / "video"), name_prefix="video", episode_trigger=lambda episode: episode == 0,
                          video_length=sys.maxsize, fps=args.fps)
        returns = []
        for episode in range(args.episodes):
            state, _ = env.reset(seed=args.seed + episode)
            episode_return, done = 0.0, False
            while not done:
                state, reward, terminated, truncated, _ = env.step(agent.greedy_action(state))
                episode_return += float(reward)
                done = terminated or truncated
            returns.append(episode_return)
            # hold the episode's last frame: the encoder drops a recording's very last frame, and a viewer
            # should see the final state and return
            env.recorded_frames.extend([env.recorded_frames[-1]] * hold_frames(env))
        env.close()  # the video is encoded here, into the temporary folder
        video = folder / "video" / "video-episode-0.mp4"
        check_video(video)
        video.replace(args.out)
    except OSError as error:  # a full disk or a vanished folder, also as moviepy reports ffmpeg's failure
        raise WriteError(args.out, error) from error
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    return returns


def hold_frames(recorder: RecordVideo) -> int:
    """Frames that hold an episode's last frame on screen: half a second."""
    return max(1, round(recorder.frames_per_sec / 2))


def check_video(video: Path) -> None:
    """Read the encoded video back through ffmpeg: moviepy does not notice when ffmpeg could write only part of it
    (on a full disk it leaves a cut file, which no player opens).

    :raises OSError: if the file is not a whole video (ENOSPC if its disk is full).
    """
    import imageio_ffmpeg

    try:
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(video))
    except (RuntimeError, OSError):
        frames = 0
    if frames == 0:
        full = os.statvfs(video.parent).f_bavail == 0
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, os.strerror(code), str(video))


def write_gif(video: Path, gif: Path, width: int = 300, frame_step: int = 2, colors: int = 16) -> None:
    """An animated GIF of `video`, small enough for a README, written atomically.

    moviepy reads and scales the frames; Pillow writes them with one 16-colour palette for the whole
    GIF, so that each frame stores only what changed (4 times smaller than moviepy's own GIF writer).

    :param width: width in pixels (default 300); the height keeps the aspect ratio.
    :param frame_step: keep every `frame_step`-th frame (default 2).
    :param colors: palette size (default 16: the classic-control scenes use few colours).
    """
    from moviepy import VideoFileClip
    from PIL import Image

    with VideoFileClip(str(video)) as clip:
        frames = [Image.fromarray(frame) for frame in clip.resized(width=width).iter_frames()][::frame_step]
        frame_ms = round(1000 * frame_step / clip.fps)
    palette = frames[0].quantize(colors)
    frames = [frame.quantize(palette=palette, dither=Image.Dither.NONE) for frame in frames]
    content = io.BytesIO()
    frames[0].save(content, format="GIF", save_all=True, append_images=frames[1:], duration=frame_ms, loop=0,
                   optimize=True)
    atomic_write(gif, content.getbuffer())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = args.weights.with_name(args.weights.name.removesuffix(".weights.h5"))
    if note := unfinished_run_note(stem):
        print(f"visualize.py: note: {note} (these weights are its best evaluated ones up to then)", file=sys.stderr)
    agent, description = load_agent(args.weights)
    returns = record_video(agent, description["env_id"], args)
    for episode, episode_return in enumerate(returns):
        print(f"episode {episode} (seed {args.seed + episode}): return {episode_return:g}")
    print(f"wrote {args.out}")
    if args.gif:
        gif = args.out.with_suffix(".gif")
        write_gif(args.out, gif)
        print(f"wrote {gif}")
    return 0


if __name__ == "__main__":
    run_cli(main)
