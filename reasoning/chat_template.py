"""Chat templates: a checkpoint's own Jinja template, rendered as transformers renders it, or ours.

Design choices:
- One rendering path. Every chat prompt, SFT example and toy-corpus transcript is the output of a
  Jinja chat template: the checkpoint's (its tokenizer_config.json `chat_template`, or a
  `chat_template.jinja` beside it, which transformers prefers) when it ships one, else
  `BUILTIN_TEMPLATE`, which our exports then carry. So the text a model is trained and evaluated on
  is the text transformers, vLLM or any other runtime builds from the same checkpoint.
- Rendered as transformers' `apply_chat_template(..., tokenize=False)` renders it (its
  utils/chat_template_utils.py): a sandboxed, immutable Jinja environment with trim_blocks and
  lstrip_blocks, the loopcontrols extension, `{% generation %}` blocks rendered as plain text,
  `raise_exception`, `strftime_now`, a JSON `tojson` that does not escape HTML, a `namespace` that
  refuses underscore names; variables `messages`, `tools=None`, `documents=None`,
  `add_generation_prompt`, the tokenizer's named special tokens (bos_token, eos_token, ...) and
  `enable_thinking`. Message keys whose value is None are dropped, as transformers drops them.
- Templates are untrusted text (they come with downloaded checkpoints): they run only inside the
  sandbox, and reaching for Python internals (an underscore attribute) raises a SecurityError
  at once instead of rendering as an empty string.
- `BUILTIN_TEMPLATE` is ours, following Qwen3's rules for system, user and assistant turns:
  an assistant turn keeps its reasoning (`<think>\\n...\\n</think>\\n\\n`) only after the last user
  message, a final assistant turn always has the block (empty without reasoning), only newlines
  are stripped around the reasoning, and thinking off pre-fills an empty think block.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.utils import Namespace

# Written for this project; Qwen3's rules (see the module docstring), system/user/assistant only.
BUILTIN_TEMPLATE = """\
{#- Qwen3's chat rules for system, user and assistant turns (ChatML with <think> blocks). -#}
{%- set ns = namespace(last_user=messages|length - 1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role not in ['system', 'user', 'assistant'] %}
        {{- raise_exception('unknown chat role ' ~ message.role ~ ': use system, user or assistant') }}
    {%- endif %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if message.role == 'assistant' %}
        {#- Reasoning: its own field, else a <think>...</think> prefix of the content. -#}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {#- Shown only in the answer to the last user message; a final turn always has the block. -#}
        {%- if loop.index0 > ns.last_user and (loop.last or reasoning) %}
            {%- set content = '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') %}
        {%- endif %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# The tokenizer's named special tokens transformers passes to every template (when set).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """A chat template that does not compile, fails while rendering, or breaks the sandbox's rules."""


class _Sandbox(ImmutableSandboxedEnvironment):
    """transformers' sandbox, except that an unsafe attribute raises at once instead of reading as undefined."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant tokens with it): the body as is."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _SafeNamespace(Namespace):
    """Jinja's namespace without underscore-prefixed names (no route to Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature trick: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a chat template may not store the underscore name {name!r} on a namespace")


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without exposing the `dict` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> ImmutableSandboxedEnvironment:
    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
        raise ImportError(f"jinja2 {jinja2.__version__} has known sandbox escapes; install jinja2>=3.1.6")
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, namespace=_SafeNamespace,
                       strftime_now=lambda fmt: datetime.now().strftime(fmt), dict=_TemplateDict())
    return env


def _plain(value: Any, where: str) -> Any:
    """`value` rebuilt from JSON types (what the template may see); anything else is refused."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    raise ChatTemplateError(f"{where}: a {type(value).__name__} cannot be passed to a chat template; "
                            "use strings, numbers, lists and dicts")


class ChatTemplate:
    """A compiled chat template. `origin` names where it came from, for error messages."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None,
                 origin: str = "the built-in chat template"):
        self.source, self.origin = source, origin
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if k in SPECIAL_TOKEN_NAMES}
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ChatTemplateError(f"{origin} is not valid Jinja (line {e.lineno}: {e.message})") from None

    @property
    def hash(self) -> str:
        """16 hex digits of a sha256 of the template text and the special tokens it is given: names
        what renders the prompts, in prompt hashes."""
        text = json.dumps([self.source, sorted(self.special_tokens.items())], ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def builtin(self) -> bool:
        return self.source == BUILTIN_TEMPLATE

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
               enable_thinking: bool = True) -> str:
        """The conversation as text, exactly `transformers`' `apply_chat_template(messages, tokenize=False,
        add_generation_prompt=..., enable_thinking=...)` on the same template and special tokens.

        `messages` are {"role", "content"} dicts (strings), with an optional "reasoning_content" on
        assistant turns. Raises ChatTemplateError for a malformed message, a template error (its own
        `raise_exception` included) or a sandbox violation, naming the template's origin."""
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation: give at least one message")
        chat = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or not isinstance(
                    m.get("content"), str):
                raise ChatTemplateError(f"message {i} must be a dict with string 'role' and 'content', got {m!r:.200}")
            chat.append(_plain({k: v for k, v in m.items() if v is not None}, f"message {i}"))
        try:
            return self._template.render(messages=chat, tools=None, documents=None,
                                         add_generation_prompt=add_generation_prompt, **self.special_tokens,
                                         enable_thinking=enable_thinking)
        except SecurityError as e:
            raise ChatTemplateError(f"{self.origin} broke the sandbox's rules ({e}); it is not a safe chat "
                                    "template: remove it or replace it with a trusted one") from None
        except jinja2.TemplateError as e:
            raise ChatTemplateError(f"{self.origin} failed to render: {e}") from None
