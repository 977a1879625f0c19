#!/usr/bin/env python3
"""Start the agent: python3 start.py [--port PORT] [--llm-url URL] [--config FILE]"""

import agent

if __name__ == "__main__":
    agent.main()
