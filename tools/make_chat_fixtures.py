#!/usr/bin/env python3
"""make_chat_fixtures.py: reference renderings of the Qwen3, Qwen2.5-Instruct, Llama-3.2-Instruct and Gemma 3 chat
templates.

Renders many message lists with transformers' apply_chat_template(tokenize=False) and writes
tests/data/tokenizer/chat_{qwen3,qwen25,llama32,gemma3}.jsonl, one case per line:
  {"messages": [...], "add_generation_prompt": bool, "enable_thinking": bool, "date_string": str|null,
   "text": str, "ids": [...]}            (ids: the text encoded with add_special_tokens=False)
or, where the template raises, {"messages": ..., ..., "error": "<exception text>"}.
model/kw_chat.c must reproduce "text" byte for byte (tests/tokenizer/test_chat.c).

Templates: Qwen3's and Gemma 3's are read from models/tokenizers/{qwen3,gemma3}/tokenizer_config.json (the real
files). Qwen2.5-Instruct's and
Llama-3.2-Instruct's are written out below (QWEN25_TEMPLATE, LLAMA32_TEMPLATE): they are the chat_template strings of
the official Qwen/Qwen2.5-*-Instruct and meta-llama/Llama-3.2-*-Instruct tokenizer_config.json files, typed in from
knowledge of those files (no network here). The local llama3/tokenizer_config.json is a base Llama-3 config, so its
template is not used. Needs transformers + jinja2 only (no torch, no network).

Usage: python3 tools/make_chat_fixtures.py [--out tests/data/tokenizer] [--only gemma3]
"""
import argparse
import json
import os

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

LLAMA32_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# The multiple-choice prompt of c2c_spec.md 5.3, with a question and four options filled in.
MC_PROMPT = (
    "Accurately answer the following question:\n\n"
    "Which gas makes up most of the Earth's atmosphere?\n\n"
    "Choices:\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\nD. Argon\n\n\n"
    "Instructions:\n"
    "- Carefully read the question and all options.\n"
    "- Select the single most correct answer.\n"
    '- Respond ONLY in the following format: "The correct answer is A/B/C/D".\n'
    "- Do not include any explanations, additional text, or punctuation besides the answer.\n\n"
    "The correct answer is"
)

# Whitespace that Python's str.strip() (Jinja's trim) removes, and some look-alikes it keeps.
PY_SPACES = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000"
NOT_SPACES = "\u200b\u180e\ufeff\u2060"


def S(c):
    return {"role": "system", "content": c}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def conversations():
    """Message lists covering every branch of the three templates reachable without tools."""
    convs = [
        [U(MC_PROMPT)],
        [U("Hello")],
        [U("")],
        [S("You are a helpful assistant."), U("Hi there!")],
        [S(""), U("empty system")],
        [S("sys"), U("q1"), A("a1"), U("q2")],
        [S("sys"), U("q1"), A("a1"), U("q2"), A("a2")],
        [U("q1"), A("a1"), U("q2"), A("a2"), U("q3")],
        [U("q"), A("<think>\nreasoning here\n</think>\n\nThe answer is B.")],
        [U("q"), A("<think>\nreasoning here\n</think>\n\nThe answer is B."), U("next")],
        [U("q"), A("<think>r1</think>a1"), U("q2"), A("<think>\n\nr2\n\n</think>\n\n\na2")],
        [U("q"), A("no think block at all")],
        [U("q"), A("before</think>after")],
        [U("q"), A("x</think>y</think>z")],
        [U("q"), A("<think>a<think>b</think>c")],
        [U("q"), A("</think>")],
        [U("q"), A("<think></think>")],
        [U("q"), A("\n\n</think>\n\n")],
        [U("q"), A("<think>only open")],
        [U("q"), A("")],
        [U("q"), A("a1"), A("a2")],
        [U("q"), A("<think>t1</think>a1"), A("<think>t2</think>a2")],
        [U("q"), A("<think>t1</think>a1"), A("plain a2")],
        [U("q"), A("plain a1"), A("<think>t2</think>a2")],
        [U("<tool_response>\nresult\n</tool_response>")],
        [U("q"), A("<think>t</think>a"), U("<tool_response>r</tool_response>"), A("<think>t2</think>a2")],
        [U("q"), A("a"), U("<tool_response>r</tool_response>"), A("plain")],
        [U("<tool_response>x"), A("<think>t</think>a")],
        [A("assistant first")],
        [A("<think>t</think>assistant first")],
        [S("sys only")],
        [S("s1"), S("s2"), U("u")],
        [U("u"), S("late system"), U("u2")],
        [U("u1"), U("u2")],
        [S("  padded system  "), U("  padded user\n\n")],
        [U(PY_SPACES + "trim me" + PY_SPACES)],
        [U(NOT_SPACES + "keep these" + NOT_SPACES)],
        [S(PY_SPACES), U(PY_SPACES)],
        [U(" \u3000中文问题：天空为什么是蓝色的？\u3000 ")],
        [U("مرحبا بالعالم"), A("  أهلاً  ")],
        [U("emoji 👩‍👩‍👧‍👦 and flags 🇫🇷"), A("🙂")],
        [U("Specials in content: <|im_start|>user\n<|im_end|> <|eot_id|> <|begin_of_text|> <think>")],
        [U("line1\r\nline2\r\n"), A("\ttabbed\t")],
        [S("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."), U("same as default")],
        [U("{{ not a template }} {% raw %}")],
        # Gemma 3: the system text opens the first user turn; roles must alternate user / non-user
        [S("sys\n"), U("q1"), A("a1")],
        [S("sys"), A("assistant after system")],
        [S("sys"), U("q1"), S("system at an odd position"), U("q2")],
        [S("sys"), U("q1"), A("a1"), A("a2")],
        [U("q1"), A("a1"), S("s"), A("a2")],
        [U("<start_of_turn>model\ninjected<end_of_turn>"), A("<bos><eos>")],
        [S(" spaced system "), U("  spaced user  "), A("  spaced model  "), U("\n")],
    ]
    return convs


def render(tok, template, messages, gen, thinking, date):
    kwargs = {}
    if thinking is not None:
        kwargs["enable_thinking"] = thinking
    if date is not None:
        kwargs["date_string"] = date
    return tok.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=gen, **kwargs
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "tokenizer"))
    ap.add_argument("--only", help="comma-separated families to rewrite (default: all)")
    args = ap.parse_args()
    qwen = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "tokenizers", "qwen3"))
    llama = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "tokenizers", "llama3"))
    gemma = AutoTokenizer.from_pretrained(os.path.join(ROOT, "models", "tokenizers", "gemma3"))
    with open(os.path.join(ROOT, "models", "tokenizers", "gemma3", "tokenizer_config.json"), encoding="utf-8") as f:
        gemma3_template = json.load(f)["chat_template"]
    with open(os.path.join(ROOT, "models", "tokenizers", "qwen3", "tokenizer_config.json"), encoding="utf-8") as f:
        qwen3_template = json.load(f)["chat_template"]
    families = [
        ("qwen3", qwen, qwen3_template, [None, True, False], [None]),
        ("qwen25", qwen, QWEN25_TEMPLATE, [None, False], [None]),
        ("llama32", llama, LLAMA32_TEMPLATE, [None], ["23 Nov 2026", "01 Jan 2025", "26 Jul 2024"]),
        ("gemma3", gemma, gemma3_template, [None], [None]),
    ]
    convs = conversations() + [[]]  # the empty list: every template raises
    for name, tok, template, thinkings, dates in families:
        if args.only and name not in args.only.split(","):
            continue
        rows = []
        for ci, messages in enumerate(convs):
            for gen in (True, False):
                for thinking in thinkings:
                    for di, date in enumerate(dates):
                        if di > 0 and ci % 4 != 0:  # other dates on a subset only
                            continue
                        row = {
                            "messages": messages,
                            "add_generation_prompt": gen,
                            # None = not passed; the C API's enable_thinking=1 is the same as not passing it.
                            "enable_thinking": thinking,
                            "date_string": date,
                        }
                        try:
                            text = render(tok, template, messages, gen, thinking, date)
                            row["text"] = text
                            row["ids"] = tok(text, add_special_tokens=False)["input_ids"]
                        except Exception as e:  # the template raised
                            row["error"] = f"{type(e).__name__}: {e}"
                        rows.append(row)
        path = os.path.join(args.out, f"chat_{name}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} cases")


if __name__ == "__main__":
    main()
