"""The batch guide's code (shared/reference/batch-guide.zh.txt, chapter 10), kept as written.

Only what a script needs to be importable changed: the snippets became functions, and the
polling sleeps read ``POLL_SECONDS`` so the tests need not wait a minute per poll. The SDK
calls, their arguments and the way results are read are the guide's own; the client comes
from ``anthropic.Anthropic()``, so ``ANTHROPIC_BASE_URL`` and ``ANTHROPIC_API_KEY`` point
it at the emulator with no other change.
"""
# ruff: noqa: E501, UP006, UP017, UP035

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Dict, List

import anthropic

POLL_SECONDS = 0.2


def create_review_batch(client: anthropic.Anthropic) -> Any:
    requests = [
        {
            "custom_id": "review-001",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 512,
                "messages": [
                    {
                        "role": "user",
                        "content": "对以下商品评论进行情感分析,输出 positive/negative/neutral:\n\n这款耳机音质非常棒,低音有力,高音清晰,强烈推荐!",
                    }
                ],
            },
        },
        {
            "custom_id": "review-002",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 512,
                "messages": [
                    {
                        "role": "user",
                        "content": "对以下商品评论进行情感分析,输出 positive/negative/neutral:\n\n快递很慢,包装也很差,产品和描述不符,非常失望。",
                    }
                ],
            },
        },
    ]
    batch = client.messages.batches.create(requests=requests)
    print(f"Batch ID: {batch.id}")
    print(f"状态: {batch.processing_status}")
    print(f"创建时间: {batch.created_at}")
    print(f"过期时间: {batch.expires_at}")
    return batch


def poll_until_ended(client: anthropic.Anthropic, batch_id: str) -> Any:
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        print(f"状态: {batch.processing_status}")
        print(f"已完成: {batch.request_counts.succeeded}")
        print(f"错误: {batch.request_counts.errored}")
        print(f"待处理: {batch.request_counts.processing}")
        if batch.processing_status == "ended":
            break
        time.sleep(POLL_SECONDS)
    print("Batch 处理完成!")
    return batch


def download_results(client: anthropic.Anthropic, batch_id: str) -> dict:
    results = {}
    for result in client.messages.batches.results(batch_id):
        custom_id = result.custom_id
        if result.result.type == "succeeded":
            message = result.result.message
            text = message.content[0].text
            results[custom_id] = {
                "status": "success",
                "text": text,
                "input_tokens": message.usage.input_tokens,
                "output_tokens": message.usage.output_tokens,
            }
        elif result.result.type == "errored":
            error = result.result.error
            results[custom_id] = {"status": "error", "error_type": error.type, "error_message": str(error)}
    return results


def stream_results_to_file(client: anthropic.Anthropic, batch_id: str, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for result in client.messages.batches.results(batch_id):
            record = {"custom_id": result.custom_id, "type": result.result.type}
            if result.result.type == "succeeded":
                record["text"] = result.result.message.content[0].text
                record["usage"] = {
                    "input_tokens": result.result.message.usage.input_tokens,
                    "output_tokens": result.result.message.usage.output_tokens,
                }
            else:
                record["error"] = result.result.error.type
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print("结果已写入 batch_results.jsonl")


def chunk_requests(requests: List[Dict], chunk_size: int = 9000):
    """将请求列表分割为多个分片"""
    for i in range(0, len(requests), chunk_size):
        yield requests[i : i + chunk_size]


def submit_batch_jobs(
    client: anthropic.Anthropic, all_requests: List[Dict], chunk_size: int = 9000
) -> List[str]:
    """提交多个 batch 并返回所有 batch ID"""
    batch_ids = []
    chunks = list(chunk_requests(all_requests, chunk_size))
    print(f"总请求数: {len(all_requests)}, 分为 {len(chunks)} 个 batch")
    for i, chunk in enumerate(chunks):
        batch = client.messages.batches.create(requests=chunk)
        batch_ids.append(batch.id)
        print(f"Batch {i + 1}/{len(chunks)} 已提交: {batch.id}")
        if i < len(chunks) - 1:
            time.sleep(POLL_SECONDS)
    return batch_ids


def wait_for_all_batches(
    client: anthropic.Anthropic, batch_ids: List[str], poll_interval: float = 60
) -> Dict[str, Any]:
    """等待所有 batch 完成并收集结果"""
    pending = set(batch_ids)
    all_results = {}
    while pending:
        completed_this_round = set()
        for batch_id in pending:
            batch = client.messages.batches.retrieve(batch_id)
            if batch.processing_status == "ended":
                print(
                    f"Batch {batch_id} 完成: "
                    f"{batch.request_counts.succeeded} 成功, "
                    f"{batch.request_counts.errored} 失败"
                )
                for result in client.messages.batches.results(batch_id):
                    if result.result.type == "succeeded":
                        all_results[result.custom_id] = result.result.message.content[0].text
                completed_this_round.add(batch_id)
        pending -= completed_this_round
        if pending:
            print(f"还有 {len(pending)} 个 batch 待完成,{poll_interval}s 后重新检查...")
            time.sleep(poll_interval)
    return all_results


def build_classification_requests(texts: List[str]) -> List[Dict]:
    return [
        {
            "custom_id": f"text-{i:06d}",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": f"分类(正面/负面/中性):{text}"}],
            },
        }
        for i, text in enumerate(texts)
    ]


SYSTEM_PROMPT = """你是一个专业的电商评论分析师。
你的任务是分析用户评论并输出:
1. 情感倾向(positive/negative/neutral)
2. 关键词(最多3个)
3. 评分预测(1-5星)
输出格式为 JSON,不要包含任何其他文字。"""


def build_review_requests(reviews: List[str]) -> List[Dict]:
    return [
        {
            "custom_id": f"review-{i}",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 100,
                "system": SYSTEM_PROMPT,
                "messages": [{"role": "user", "content": review_text}],
            },
        }
        for i, review_text in enumerate(reviews)
    ]


def estimate_batch_cost(
    client: anthropic.Anthropic, requests: list, model: str = "claude-haiku-4-5-20251001"
) -> dict:
    """估算 batch 成本(使用 token 计数 API)"""
    BATCH_PRICES = {
        "claude-haiku-4-5-20251001": {"input": 0.40, "output": 2.00},
        "claude-sonnet-4-6": {"input": 1.50, "output": 7.50},
        "claude-opus-4-6": {"input": 7.50, "output": 37.50},
    }
    total_input_tokens = 0
    sample_size = min(10, len(requests))
    for req in requests[:sample_size]:
        count = client.messages.count_tokens(
            model=model, system=req["params"].get("system", ""), messages=req["params"]["messages"]
        )
        total_input_tokens += count.input_tokens
    avg_input = total_input_tokens / sample_size
    estimated_total_input = avg_input * len(requests)
    avg_output = (
        sum(req["params"].get("max_tokens", 100) * 0.5 for req in requests[:sample_size]) / sample_size
    )
    estimated_total_output = avg_output * len(requests)
    price = BATCH_PRICES.get(model, BATCH_PRICES["claude-haiku-4-5-20251001"])
    input_cost = (estimated_total_input / 1_000_000) * price["input"]
    output_cost = (estimated_total_output / 1_000_000) * price["output"]
    return {
        "estimated_input_tokens": int(estimated_total_input),
        "estimated_output_tokens": int(estimated_total_output),
        "estimated_input_cost_usd": round(input_cost, 4),
        "estimated_output_cost_usd": round(output_cost, 4),
        "estimated_total_cost_usd": round(input_cost + output_cost, 4),
    }


def process_batch_results(client: anthropic.Anthropic, batch_id: str) -> dict:
    """处理 batch 结果,分类统计成功与失败"""
    succeeded = {}
    failed = defaultdict(list)
    for result in client.messages.batches.results(batch_id):
        cid = result.custom_id
        if result.result.type == "succeeded":
            succeeded[cid] = result.result.message.content[0].text
        elif result.result.type == "errored":
            error = result.result.error
            failed[error.type].append({"custom_id": cid, "error": str(error)})
    if failed:
        print("\n失败请求统计:")
        for error_type, items in failed.items():
            print(f" {error_type}: {len(items)} 条")
            for item in items[:3]:
                print(f" - {item['custom_id']}: {item['error']}")
    print(f"\n成功: {len(succeeded)}, 失败: {sum(len(v) for v in failed.values())}")
    return {"succeeded": succeeded, "failed": dict(failed)}


def retry_failed_requests(
    original_requests: list, failed_ids: set, client: anthropic.Anthropic
) -> str | None:
    """将失败的请求提取出来重新提交"""
    retry_requests = [req for req in original_requests if req["custom_id"] in failed_ids]
    if not retry_requests:
        return None
    print(f"重新提交 {len(retry_requests)} 条失败请求...")
    retry_batch = client.messages.batches.create(requests=retry_requests)
    return retry_batch.id


def list_batches(client: anthropic.Anthropic) -> list:
    seen = []
    for batch in client.messages.batches.list():
        print(f"{batch.id}: {batch.processing_status} - 创建于 {batch.created_at}")
        seen.append(batch)
    return seen


def cancel_batch(client: anthropic.Anthropic, batch_id: str) -> Any:
    batch = client.messages.batches.cancel(batch_id)
    print(f"取消状态: {batch.processing_status}")
    return batch


def check_batch_expiry(batch: Any) -> float:
    """检查 batch 是否即将过期"""
    now = datetime.now(timezone.utc)
    expires_at = batch.expires_at
    time_left = expires_at - now
    hours_left = time_left.total_seconds() / 3600
    if hours_left < 2:
        print(f"警告:Batch {batch.id} 将在 {hours_left:.1f} 小时内过期!")
    elif hours_left < 6:
        print(f"注意:Batch {batch.id} 还有 {hours_left:.1f} 小时到期")
    return hours_left


SHARED_SYSTEM = "你是专业文档分析助手,负责提取文档中的关键信息。"


def build_cached_document_requests(documents: List[str]) -> List[Dict]:
    return [
        {
            "custom_id": f"doc-{i}",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 200,
                "system": [{"type": "text", "text": SHARED_SYSTEM, "cache_control": {"type": "ephemeral"}}],
                "messages": [{"role": "user", "content": doc_text}],
            },
        }
        for i, doc_text in enumerate(documents)
    ]


def batch_generate_descriptions(products: list[dict], output_file: str = "descriptions.jsonl") -> None:
    """批量生成产品描述"""
    client = anthropic.Anthropic()
    requests = [
        {
            "custom_id": f"product-{p['id']}",
            "params": {
                "model": "claude-haiku-4-5-20251001",
                "max_tokens": 300,
                "system": ("你是电商文案专家,用吸引人的中文写作风格为产品生成50-100字的销售描述。"),
                "messages": [
                    {
                        "role": "user",
                        "content": (
                            f"产品名称:{p['name']}\n类别:{p['category']}\n特点:{', '.join(p['features'])}"
                        ),
                    }
                ],
            },
        }
        for p in products
    ]
    batch_ids = []
    for i in range(0, len(requests), 9000):
        chunk = requests[i : i + 9000]
        batch = client.messages.batches.create(requests=chunk)
        batch_ids.append(batch.id)
        print(f"提交 Batch: {batch.id} ({len(chunk)} 条请求)")
    pending = set(batch_ids)
    while pending:
        done = set()
        for bid in pending:
            b = client.messages.batches.retrieve(bid)
            if b.processing_status == "ended":
                done.add(bid)
        pending -= done
        if pending:
            print(f"等待 {len(pending)} 个 batch...")
            time.sleep(POLL_SECONDS)
    with open(output_file, "w", encoding="utf-8") as f:
        for bid in batch_ids:
            for result in client.messages.batches.results(bid):
                if result.result.type == "succeeded":
                    product_id = result.custom_id.replace("product-", "")
                    record = {"id": product_id, "description": result.result.message.content[0].text}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"完成!结果写入 {output_file}")
