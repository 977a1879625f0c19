#!/usr/bin/env python3
"""Deploy the model server: python3 deploy_api_server.py [--port PORT] [--config FILE]"""

import llm_server

if __name__ == "__main__":
    llm_server.main()
