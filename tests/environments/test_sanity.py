"""Behaviour tests of the sanity envs: the bandit pays its arm only, and the memory test needs turn 1 to be won."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import agentgym
from agentgym.errors import StateError
from agentgym.testing import check_env
from environments.sanity.bandit import COLOURS, BanditEnv
from environments.sanity.memory import WORDS, MemoryEnv

# ---------------------------------------------------------------------- bandit


def test_registered_with_aliases_tags_and_defaults():
    bandit, memory = agentgym.make("bandit"), agentgym.make("memory")
    assert bandit.spec_id == "agentgym/Bandit-v0" and memory.spec_id == "agentgym/Memory-v0"
    assert "sanity" in agentgym.spec("bandit").tags and "sanity" in agentgym.spec("memory").tags
    assert bandit.action_names == ("red", "green", "blue", "yellow")
    assert bandit.current_paying_arm == 2 and memory.action_names == ("ok", "apple", "river", "stone", "cloud")


@pytest.mark.parametrize("arm", range(4))
def test_only_the_paying_arm_pays(arm):
    env = BanditEnv(paying_arm=2, obs_mode="text")
    env.reset(seed=arm)
    _, reward, terminated, truncated, info = env.step(arm)
    assert reward == (1.0 if arm == 2 else 0.0)
    assert info["success"] is (arm == 2) and info["action_valid"] and info["arm"] == arm
    assert terminated and not truncated


def test_fixed_bandit_does_not_reveal_the_arm():
    env = BanditEnv(paying_arm=1)
    obs, _ = env.reset(seed=0)
    assert obs["text"] == "Which colour do you choose?"
    assert not obs["struct"].any()
    assert "green" not in env.instructions().split("Answer")[0]  # the rules do not name the paying colour


def test_contextual_observation_names_the_paying_arm_and_it_varies():
    env = BanditEnv(paying_arm="task")
    seen = set()
    for task in env.task_set.tasks("test", n=40):
        obs, _ = env.reset(seed=0, options={"task": task})
        arm = env.current_paying_arm
        seen.add(arm)
        assert obs["text"] == f"The lucky colour today is {COLOURS[arm]}. Which colour do you choose?"
        assert obs["struct"].tolist() == np.eye(4, dtype=np.float32)[arm].tolist()
        assert env.step(COLOURS[arm])[1] == 1.0
    assert seen == {0, 1, 2, 3}


def test_contextual_arm_depends_on_the_task_only():
    env = BanditEnv(paying_arm="task")
    env.reset(seed=1, options={"task": 123})
    first = env.current_paying_arm
    env.reset(seed=99, options={"task": 123})
    assert env.current_paying_arm == first == env.paying_arm_of(123)


def test_contextual_bandit_passes_the_contract():
    assert check_env("bandit", paying_arm="task", num_arms=8).passed


def test_invalid_text_is_a_penalised_noop_and_the_episode_continues():
    env = BanditEnv(invalid_action_penalty=0.5, max_steps=3, obs_mode="text")
    first, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("I like turtles")
    assert reward == -0.5 and not info["action_valid"] and "colour" in info["action_error"]
    assert not (terminated or truncated) and obs == first and not info["success"]
    obs, reward, terminated, truncated, info = env.step("<answer>Blue</answer>")
    assert reward == 1.0 and terminated and not truncated and info["success"]


def test_only_invalid_input_truncates_after_max_steps():
    env = BanditEnv(max_steps=3)
    env.reset(seed=0)
    ends = [env.step(action)[2:4] for action in ("nothing", 7, "still nothing")]
    assert ends == [(False, False), (False, False), (False, True)]
    # Past the end every step is a no-op that repeats the end, even a paying choice.
    _, reward, terminated, truncated, info = env.step(2)
    assert (reward, terminated, truncated, info["success"]) == (0.0, False, True, False)


def test_stepping_after_the_choice_repeats_the_end_without_reward():
    env = BanditEnv()
    env.reset(seed=0)
    env.step(2)
    _, reward, terminated, _, info = env.step(0)
    assert reward == 0.0 and terminated and info["success"] and info["arm"] == 2


@pytest.mark.parametrize(
    ("text", "arm"),
    [
        ("blue", 2),
        ("  YELLOW.", 3),
        ("I pick Green, not red", 1),
        ("red or blue? <answer>blue</answer>", 2),
        ("<answer>red</answer> hmm <answer>Yellow</answer>", 3),
        ("reddish", None),
        ("<answer>maybe</answer> blue", None),
        ("purple", None),  # not an arm of a 4-arm bandit
        ("", None),
    ],
)
def test_parse_action(text, arm):
    assert BanditEnv().parse_action(text) == arm


def test_instructions_state_the_answer_format():
    assert "Answer with one colour: red, green, blue or yellow" in BanditEnv().instructions()
    assert "red, green or blue" in BanditEnv(num_arms=3).action_format()


def test_every_text_view_fits_the_declared_space():
    env = BanditEnv(num_arms=8, paying_arm="task", obs_mode="text")
    for task in range(50):
        obs, _ = env.reset(seed=0, options={"task": task})
        assert obs in env.observation_space
        obs = env.step(int(np.argmax([len(c) for c in COLOURS])))[0]
        assert obs in env.observation_space


def test_bandit_state_round_trip_and_key():
    env = BanditEnv(paying_arm="task")
    env.reset(seed=3)
    state = pickle.loads(pickle.dumps(env.get_state()))
    key = env.state_key()
    env.step(0)
    assert env.state_key() != key
    env.set_state(state)
    assert env.state_key() == key and env.text_observation().startswith("The lucky colour")
    with pytest.raises(StateError, match="num_arms=4"):
        BanditEnv(num_arms=5).set_state(state)


@pytest.mark.parametrize(
    "kwargs", [{"num_arms": 1}, {"num_arms": 9}, {"paying_arm": 4}, {"paying_arm": "lucky"}, {"max_steps": 0}]
)
def test_bandit_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        BanditEnv(**kwargs)


def test_oracle_reaches_the_known_optimum_and_random_gets_one_in_num_arms():
    env = BanditEnv(paying_arm="task")
    rng = np.random.default_rng(0)
    oracle_return = random_wins = 0.0
    tasks = env.task_set.tasks("test", n=400)
    for task in tasks:
        env.reset(seed=0, options={"task": task})
        oracle_return += env.step(env.oracle_action())[1]
        env.reset(seed=0, options={"task": task})
        random_wins += env.step(int(rng.integers(4)))[4]["success"]
    assert oracle_return == len(tasks)
    assert 0.18 < random_wins / len(tasks) < 0.32


# ---------------------------------------------------------------------- memory


def play_memory(env: MemoryEnv, task: int, policy) -> tuple[float, list[str]]:
    """Run one episode; ``policy(text, turn)`` answers each observation. Returns the return and the texts seen."""
    obs, _ = env.reset(seed=0, options={"task": task})
    texts, total = [obs], 0.0
    for turn in range(env.max_steps):
        obs, reward, terminated, truncated, _ = env.step(policy(obs, turn))
        total += reward
        texts.append(obs)
        if terminated or truncated:
            return total, texts
    raise AssertionError("the episode did not end within max_steps")


def test_memory_episode_shows_the_word_once_then_waits_then_asks():
    env = MemoryEnv(obs_mode="text")
    task = env.task_set.tasks("test", n=1)[0]
    total, texts = play_memory(env, task, lambda obs, turn: "ok")
    word = WORDS[env.secret_of(task)]
    assert texts == [
        f"The secret word is {word}. Remember it.", "Wait.", "Wait.", "What was the secret word?", "You answered ok."
    ]
    assert total == 0.0
    assert all(w not in text for text in texts[1:] for w in WORDS)  # only turn 1 carries the word


def test_memory_oracle_and_a_remembering_policy_get_the_optimum():
    env = MemoryEnv(obs_mode="text")
    tasks = env.task_set.tasks("test", n=100)

    memory: dict[str, str] = {}

    def remembering(obs: str, turn: int) -> str:
        if turn == 0:  # the only observation that names the word
            memory["word"] = obs.split("is ")[1].split(".")[0]
        return memory["word"] if obs.startswith("What") else "ok"

    assert sum(play_memory(env, t, remembering)[0] for t in tasks) == len(tasks)
    oracle_total = 0.0
    for task in tasks:
        env.reset(seed=0, options={"task": task})
        done = False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.oracle_action())
            oracle_total += reward
            done = terminated or truncated
    assert oracle_total == len(tasks)


def test_a_policy_that_ignores_the_first_observation_gets_one_in_num_words():
    env = MemoryEnv(obs_mode="text", num_words=4)
    tasks = env.task_set.tasks("test", n=400)
    # The best memoryless policy: since no later observation names the word, any fixed guess is as good as any.
    total = sum(play_memory(env, t, lambda obs, turn: "apple" if obs.startswith("What") else "ok")[0] for t in tasks)
    assert 0.18 < total / len(tasks) < 0.32


def test_memory_struct_view_shows_the_secret_only_on_turn_one():
    env = MemoryEnv(obs_mode="struct", num_turns=3)
    obs, _ = env.reset(seed=0, options={"task": 5})
    secret = env.secret_of(5)
    assert obs.tolist() == [1.0 if i == secret else 0.0 for i in range(4)] + [0.0]
    assert env.step(0)[0].tolist() == [0.0] * 5  # waiting
    assert env.step(0)[0].tolist() == [0.0] * 4 + [1.0]  # asked


def test_answers_before_the_question_are_ignored_and_ok_at_the_question_is_wrong():
    env = MemoryEnv(obs_mode="text", num_turns=3)
    env.reset(seed=0, options={"task": 0})
    secret_action = env.secret_of(0) + 1
    for _ in range(2):
        _, reward, terminated, truncated, info = env.step(secret_action)
        assert (reward, terminated, truncated, info["success"]) == (0.0, False, False, False)
    _, reward, terminated, _, info = env.step("ok")
    assert reward == 0.0 and terminated and not info["success"]


def test_invalid_answer_at_the_question_is_a_noop_then_truncation():
    env = MemoryEnv(obs_mode="text", num_turns=2, max_steps=3, invalid_action_penalty=0.25)
    env.reset(seed=0, options={"task": 0})
    env.step("ok")
    obs, reward, terminated, truncated, info = env.step("I forgot")
    assert obs == "What was the secret word?" and reward == -0.25 and not info["action_valid"]
    assert not (terminated or truncated)
    assert env.step("no idea")[2:4] == (False, True)


def test_memory_state_round_trip_and_contract():
    env = MemoryEnv()
    env.reset(seed=2)
    env.step(0)
    state = pickle.loads(pickle.dumps(env.get_state()))
    key = env.state_key()
    env.step(0)
    env.set_state(state)
    assert env.state_key() == key
    with pytest.raises(StateError, match="num_turns"):
        MemoryEnv(num_turns=5).set_state(state)
    assert check_env("memory", num_words=8, num_turns=6).passed


@pytest.mark.parametrize(
    "kwargs", [{"num_words": 1}, {"num_words": 9}, {"num_turns": 1}, {"max_steps": 3}, {"num_turns": True}]
)
def test_memory_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        MemoryEnv(**kwargs)
