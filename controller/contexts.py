"""From a caller's channel to the conversation it gets: which context (AI_CONTEXT), which provider
(AI_PROVIDER), which media profile, and the greeting and prompt with the template variables filled in."""

from __future__ import annotations

from dataclasses import dataclass

from shared.config.schema import Config, Profile
from shared.config.templates import Template

PROVIDERS = ("openai_realtime",)


class Unroutable(Exception):
    """The call names a context or provider this cluster does not have; it goes to the fallback."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason  # low-cardinality, for metrics: unknown_context | unknown_provider | ...
        super().__init__(detail)


@dataclass(frozen=True)
class Route:
    context: str
    provider: str
    profile_name: str
    profile: Profile
    greeting: str
    instructions: str
    tools: list[str]
    voice: str | None


def template_values(config: Config, caller_name: str, caller_number: str) -> dict[str, str]:
    # An unnamed caller is greeted as "there" ("Hi there, ..."), never "Hi , ..." or "Hi None".
    # The keys are TEMPLATE_VARIABLES (check-config judges prompts by that list; a test holds them equal).
    return {
        "caller_name": caller_name.strip() or "there",
        "caller_number": caller_number.strip(),
        "company_name": config.company_name,
    }


def resolve(
    config: Config, ai_context: str | None, ai_provider: str | None, caller_name: str, caller_number: str
) -> Route:
    """The call's route, or `Unroutable`. An unset/empty AI_CONTEXT means `default_context`; an unset
    AI_PROVIDER means the context's provider."""
    name = (ai_context or "").strip() or config.default_context
    if not name:
        raise Unroutable("no_context", "the call has no AI_CONTEXT and the config has no default_context")
    context = config.contexts.get(name)
    if context is None:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise Unroutable("unknown_context", f"AI_CONTEXT {name!r} is not in the config's contexts ({known})")
    provider = (ai_provider or "").strip() or context.provider
    if provider not in PROVIDERS:
        raise Unroutable("unknown_provider", f"AI_PROVIDER {provider!r} is not supported (use openai_realtime)")
    settings = config.providers.openai_realtime
    if not settings.enabled:
        raise Unroutable("provider_disabled", f"provider {provider} is disabled in the config")
    profile_name = context.profile or config.default_profile
    profile = config.profile(profile_name)
    if profile is None:
        raise Unroutable("unknown_profile", f"profile {profile_name!r} of context {name!r} does not exist")
    fill = Template(template_values(config, caller_name, caller_number)).fill
    greeting = context.greeting if context.greeting is not None else settings.greeting
    tools: list[str] = list(context.tools if context.tools is not None else settings.tools)
    return Route(
        context=name,
        provider=provider,
        profile_name=profile_name,
        profile=profile,
        greeting=fill(greeting),
        instructions=fill(context.prompt or settings.instructions),
        tools=tools,
        voice=context.voice,
    )
