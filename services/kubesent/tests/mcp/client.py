"""An MCP client built on the official Python SDK (`mcp` on PyPI), as an agent would use KubeSent.

    client.py stdio <kubesent> [args...]   spawn `kubesent mcp` and talk to it over stdio
    client.py http <url>                   talk to `kubesent mcp --listen` over Streamable HTTP

Reads {"calls": [{"tool": name, "arguments": {...}}, ...], "watch": uri?} on stdin (with a `watch`, the
calls run inside a `subscriptions/listen` for that resource, and the first update is waited for) and prints one JSON
document: the server's tools (name, annotations, input schema), its resources and the first one's
contents, and each call's result (text contents, structured error flag) or MCP error (code, message).
"""

import asyncio
import json

import anyio
import os
import sys

from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated, listen
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS


async def session_calls(read, write, calls, watch=None):
    client_info = types.Implementation(name="kubesent-test-agent", version="1.0")
    seen = anyio.Event()
    updated_uris = []

    async def on_message(message):
        root = getattr(message, "root", message)
        if isinstance(root, types.ResourceUpdatedNotification) and str(root.params.uri) == watch:
            updated_uris.append(str(root.params.uri))
            seen.set()

    async with ClientSession(read, write, client_info=client_info, message_handler=on_message) as session:
        await session.initialize()
        listed = await session.list_tools()
        tools = [
            {
                "name": tool.name,
                "annotations": tool.annotations.model_dump(exclude_none=True, by_alias=True) if tool.annotations else {},
                "input_schema": tool.input_schema,
            }
            for tool in listed.tools
        ]
        resources = [
            {"uri": str(r.uri), "name": r.name, "description": r.description}
            for r in (await session.list_resources()).resources
        ]
        read = []
        for resource in resources[:1]:
            contents = (await session.read_resource(resource["uri"])).contents
            read.append({"uri": resource["uri"], "texts": [getattr(c, "text", "") for c in contents]})
        if watch and session.protocol_version in MODERN_PROTOCOL_VERSIONS:
            async with listen(session, resource_subscriptions=[watch]) as subscription:
                results = await run_calls(session, calls)
                updated = None
                with anyio.fail_after(60):
                    async for event in subscription:
                        if isinstance(event, ResourceUpdated) and event.uri == watch:
                            updated = event.uri
                            break
            return {"tools": tools, "resources": resources, "read": read, "results": results, "updated": updated}
        if watch:
            # Before 2026-07-28: resources/subscribe, and the notification through the message handler.
            await session.subscribe_resource(watch)
            results = await run_calls(session, calls)
            with anyio.fail_after(60):
                await seen.wait()
            return {"tools": tools, "resources": resources, "read": read, "results": results, "updated": updated_uris[0]}
        results = await run_calls(session, calls)
        return {"tools": tools, "resources": resources, "read": read, "results": results}


async def run_calls(session, calls):
    results = []
    for call in calls:
        try:
            result = await session.call_tool(call["tool"], call.get("arguments") or {})
            texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
            results.append({"tool": call["tool"], "error": bool(result.is_error), "texts": texts})
        except MCPError as error:
            results.append({"tool": call["tool"], "mcp_error": {"code": error.code, "message": error.message}})
    return results


async def main():
    request = json.load(sys.stdin)
    calls, watch = request["calls"], request.get("watch")
    if sys.argv[1] == "stdio":
        # The SDK gives a server only a few of the client's variables: pass KubeSent's settings on.
        env = {k: v for k, v in os.environ.items() if k.startswith("KUBESENT_") or k == "KUBECONFIG"}
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:], env=env)
        async with stdio_client(params) as (read, write):
            out = await session_calls(read, write, calls, watch)
    else:
        async with streamable_http_client(sys.argv[2]) as streams:
            read, write = streams[0], streams[1]
            out = await session_calls(read, write, calls, watch)
    print(json.dumps(out))


asyncio.run(main())
