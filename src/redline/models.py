"""The `redline` Inspect model provider: `redline/<name>`.

Scripted policies (`redline/reference`, `redline/idle`, and any registered with
`redline.scripted.register_policy`) and the embedded real model (`redline/smollm2`).
"""

from __future__ import annotations

from typing import Any

from inspect_ai.model import ChatMessage, GenerateConfig, ModelAPI, ModelOutput, modelapi
from inspect_ai.tool import ToolChoice, ToolInfo

from redline.scripted import get_policy, next_action, policy_names, render

EMBEDDED_MODELS = ("smollm2",)


class ScriptedModelAPI(ModelAPI):
    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig | None = None, **model_args: Any) -> None:
        super().__init__(model_name, base_url, api_key, [], config or GenerateConfig())
        policy = get_policy(model_name)
        assert policy is not None, model_name  # RedlineModelAPI dispatches only known names here
        self.policy = policy

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> ModelOutput:
        return render(next_action(self.policy, input), tools, f"redline/{self.model_name}")


@modelapi(name="redline")
def redline_models() -> type[ModelAPI]:
    return RedlineModelAPI


class RedlineModelAPI(ModelAPI):
    """Dispatches on the model name: a scripted policy, or the embedded model."""

    def __init__(self, model_name: str, base_url: str | None = None, api_key: str | None = None,
                 config: GenerateConfig | None = None, **model_args: Any) -> None:
        super().__init__(model_name, base_url, api_key, [], config or GenerateConfig())
        if get_policy(model_name) is not None:
            self.impl: ModelAPI = ScriptedModelAPI(model_name, base_url, api_key, config, **model_args)
        elif model_name in EMBEDDED_MODELS:
            from redline.embedded import EmbeddedModelAPI

            self.impl = EmbeddedModelAPI(model_name, base_url, api_key, config, **model_args)
        else:
            known = ", ".join(f"redline/{n}" for n in [*policy_names(), *EMBEDDED_MODELS])
            # A PrerequisiteError: Inspect prints its one line instead of a traceback.
            from redline.scenarios.common import OptionsError

            raise OptionsError(f"unknown redline model 'redline/{model_name}' (known: {known})")

    async def generate(self, input: list[ChatMessage], tools: list[ToolInfo], tool_choice: ToolChoice,
                       config: GenerateConfig) -> Any:
        return await self.impl.generate(input, tools, tool_choice, config)

    # Inspect asks the outer API for these defaults; the embedded model has its own.
    def max_tokens(self) -> int | None:
        return self.impl.max_tokens()

    def max_connections(self) -> int:
        return self.impl.max_connections()

    async def aclose(self) -> None:
        close = getattr(self.impl, "aclose", None)
        if close is not None:
            await close()
