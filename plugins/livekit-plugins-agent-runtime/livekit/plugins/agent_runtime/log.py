import logging

logger = logging.getLogger("livekit.plugins.agent_runtime")
