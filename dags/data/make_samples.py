"""Write the sample inputs of the example DAGs (run once; the outputs are committed).

    .venv/bin/python dags/data/make_samples.py

Deterministic: the same seed always writes the same files, so a re-run changes nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20260101

PRODUCTS = [
    ("trail running shoes", "footwear"),
    ("espresso machine", "kitchen"),
    ("noise-cancelling headphones", "audio"),
    ("standing desk", "office"),
    ("cast-iron skillet", "kitchen"),
    ("rain jacket", "outdoor"),
    ("mechanical keyboard", "office"),
    ("robot vacuum", "home"),
    ("yoga mat", "fitness"),
    ("smart thermostat", "home"),
]
OPENERS = {
    5: ["Absolutely love this {p}.", "Best {p} I have owned.", "Five stars for this {p}!"],
    4: ["Really good {p}.", "Solid {p}, a few small gripes.", "Happy with this {p} overall."],
    3: ["This {p} is okay.", "Mixed feelings about the {p}.", "The {p} does the job, nothing more."],
    2: ["Disappointed with the {p}.", "The {p} did not live up to the hype.", "Not great, this {p}."],
    1: ["Terrible {p}.", "Returned the {p} after a week.", "Avoid this {p}."],
}
DETAILS = {
    "good": [
        "build quality is excellent",
        "setup took five minutes",
        "it is very quiet",
        "battery lasts for days",
        "shipping was fast",
        "looks great in the room",
    ],
    "bad": [
        "it broke after a month",
        "the instructions were useless",
        "it is much louder than expected",
        "customer support never answered",
        "the color faded quickly",
        "it arrived scratched",
    ],
}


def reviews(rng: random.Random, n: int = 200) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        product, category = rng.choice(PRODUCTS)
        stars = rng.choice([1, 2, 3, 4, 4, 5, 5, 5])
        opener = rng.choice(OPENERS[stars]).format(p=product)
        good = rng.sample(DETAILS["good"], k=max(0, stars - 2) if stars > 2 else 0)
        bad = rng.sample(DETAILS["bad"], k=max(0, 3 - stars) + (1 if stars == 3 else 0))
        details = "; ".join(good[:2] + bad[:2])
        text = f"{opener} {details.capitalize()}." if details else opener
        rows.append({"review_id": f"review-{i:04d}", "product": product, "category": category, "text": text})
    return rows


def products(rng: random.Random, n: int = 40) -> list[dict[str, object]]:
    features = [
        "waterproof",
        "lightweight",
        "recyclable materials",
        "two-year warranty",
        "USB-C charging",
        "dishwasher safe",
        "adjustable",
        "foldable",
        "energy efficient",
        "app control",
    ]
    rows = []
    for i in range(n):
        product, category = PRODUCTS[i % len(PRODUCTS)]
        rows.append(
            {
                "sku": f"sku-{i:04d}",
                "name": f"{product.title()} {rng.choice(['Pro', 'Lite', 'Max', 'One'])}",
                "category": category,
                "features": ", ".join(rng.sample(features, k=3)),
            }
        )
    return rows


def documents(rng: random.Random, n: int = 30) -> list[dict[str, object]]:
    topics = [
        "quarterly revenue",
        "a data-center migration",
        "a customer churn analysis",
        "a security review",
        "a hiring plan",
        "a supplier contract renewal",
    ]
    rows = []
    for i in range(n):
        topic = rng.choice(topics)
        paragraphs = [
            f"This memo covers {topic}. Section {k + 1} describes the findings of team {rng.randint(1, 9)} "
            f"and the actions agreed for the next {rng.randint(2, 8)} weeks."
            for k in range(rng.randint(3, 6))
        ]
        rows.append(
            {"doc_id": f"doc-{i:03d}", "title": f"Memo on {topic} #{i}", "body": "\n\n".join(paragraphs)}
        )
    return rows


INVOICES = [
    ("invoice-1.pdf", "Acme Tools Invoice A-1001 total 1,240.00 USD"),
    ("invoice-2.pdf", "Blue Fern GmbH Rechnung 2026-77 total 312.50 EUR"),
    ("invoice-3.pdf", "Northwind Ltd Invoice NW-9 total 89.99 GBP"),
]


def invoices(folder: Path) -> None:
    """Write the invoice samples of ``invoice_extraction``: three one-page PDFs and a PNG scan."""
    import sys

    sys.path.insert(0, str(HERE.parents[1] / "tests"))
    from media_files import pdf_bytes, png_bytes  # the tests' PDF and PNG writers: no imaging library

    folder.mkdir(exist_ok=True)
    for name, text in INVOICES:
        (folder / name).write_bytes(pdf_bytes(1, text=text))
    (folder / "receipt-4.png").write_bytes(png_bytes(320, 480, (240, 240, 230)))


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


if __name__ == "__main__":
    rng = random.Random(SEED)
    write_jsonl(HERE / "reviews.jsonl", reviews(rng))
    write_jsonl(HERE / "products.jsonl", products(rng))
    write_jsonl(HERE / "documents.jsonl", documents(rng))
    invoices(HERE / "invoices")
