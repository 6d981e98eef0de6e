"""An MCP client on the official Python SDK (`mcp` on PyPI), for tests/tests/mcp.rs.

Connects over Streamable HTTP (the gateway's `[listen] mcp`, HTTPS with the
gateway's CA and a bearer token) or over stdio (`sluice mcp`), performs one
action and prints the outcome as one JSON document on stdout:

    mcp_client.py http URL CA TOKEN [--mode legacy|auto] list
    mcp_client.py http URL CA TOKEN call NAME ARGUMENTS_JSON
    mcp_client.py stdio SLUICE_BIN CONFIG TOKEN [--env KEY=VALUE] list|call ...

`list` prints {"protocol": VERSION, "tools": [{"name", "description", "input_schema"}]};
`call` prints {"protocol", "is_error", "text", "structured", "progress": [messages]}.
A protocol error (JSON-RPC error) prints {"error": {"code", "message"}}.
"""

import argparse
import asyncio
import json
import ssl
import sys

import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def transport(args):
    if args.transport == "http":
        context = ssl.create_default_context(cafile=args.ca)
        client = httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {args.token}"},
            verify=context,
            timeout=httpx2.Timeout(30.0, read=300.0),
        )
        return streamable_http_client(args.target, http_client=client)
    return StdioServerParameters(
        command=args.target,
        args=["mcp", "--config", args.ca],
        env={"SLUICE_TOKEN": args.token, "SLUICE_LOG": "warn", **dict(e.split("=", 1) for e in args.env)},
    )


async def run(args):
    progress = []

    async def on_progress(value, total, message):
        progress.append(message)

    async with Client(transport(args), mode=args.mode, raise_exceptions=True) as client:
        protocol = client.protocol_version
        try:
            if args.action == "list":
                result = await client.list_tools()
                return {
                    "protocol": protocol,
                    "tools": [
                        {
                            "name": t.name,
                            "description": t.description,
                            "input_schema": t.input_schema,
                        }
                        for t in result.tools
                    ],
                }
            arguments = json.loads(args.arguments)
            result = await client.call_tool(
                args.name, arguments, progress_callback=on_progress
            )
        except MCPError as e:
            return {"protocol": protocol, "error": {"code": e.error.code, "message": e.error.message}}
        text = "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")
        return {
            "protocol": protocol,
            "is_error": bool(result.is_error),
            "text": text,
            "structured": result.structured_content,
            "progress": progress,
        }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["http", "stdio"])
    parser.add_argument("target", help="the MCP URL, or the sluice binary for stdio")
    parser.add_argument("ca", help="the gateway's CA (http), or its config file (stdio)")
    parser.add_argument("token")
    parser.add_argument("--mode", default="legacy")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for sluice mcp (stdio)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    call = sub.add_parser("call")
    call.add_argument("name")
    call.add_argument("arguments")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
