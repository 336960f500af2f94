"""A batch client to kill: ``python _batch_child.py URL OUT JOURNAL JOBS CONCURRENCY``.

Runs ``JOBS`` txt2img requests (seed ``i`` for item ``i``, so the server's graph tells the
items apart) with ``generate_many(journal=JOURNAL)``; prints a JSON summary when it is done.
"""

from __future__ import annotations

import asyncio
import json
import sys

from dreamgen_async import DreamGenerator, GenerationResult, Txt2ImgRequest


def requests(jobs: int) -> list[Txt2ImgRequest]:
    return [Txt2ImgRequest(f"frame {i}", seed=i, width=64, height=64) for i in range(jobs)]


async def main(url: str, out: str, journal: str, jobs: int, concurrency: int) -> None:
    async with DreamGenerator(url, output_dir=out, max_in_flight=concurrency) as gen:
        outcomes = await gen.generate_many(requests(jobs), concurrency=concurrency, journal=journal)
    results = [o for o in outcomes if isinstance(o, GenerationResult)]
    print(
        json.dumps(
            {
                "ok": len(results),
                "failed": len(outcomes) - len(results),
                "resumed": sum(r.resumed for r in results),
                "errors": sorted(
                    {str(o.error) for o in outcomes if not isinstance(o, GenerationResult)}
                ),
            }
        )
    )


if __name__ == "__main__":
    url, out, journal, jobs, concurrency = sys.argv[1:6]
    asyncio.run(main(url, out, journal, int(jobs), int(concurrency)))
