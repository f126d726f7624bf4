"""The bench routes on Quart (ASGI), run by bench/peers.py on uvicorn + uvloop
+ httptools. Sessions are Quart's stock signed cookies."""

import asyncio
import os

import redis.asyncio as redis
from quart import Quart, session

from bench.twins import REDIS_KEY, cpu_work

client = redis.Redis.from_url(os.environ["REDIS_URL"])

app = Quart(__name__)
app.config["SECRET_KEY"] = os.environ["SECRET_KEY"]


@app.get("/io")
async def io():
    await asyncio.sleep(0.05)
    return {"slept": 0.05}


@app.get("/hello")
async def hello():
    return {"hello": "world"}


@app.get("/cpu")
async def cpu():
    return {"total": cpu_work()}


@app.get("/redis")
async def redis_get_set():
    value = int(await client.get(REDIS_KEY) or 0)
    await client.set(REDIS_KEY, value + 1)
    return {"value": value}


@app.get("/session")
async def session_read_write():
    count = session.get("count", 0) + 1
    session["count"] = count
    return {"count": count}
