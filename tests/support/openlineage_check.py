"""Validates sluice's OpenLineage events against the spec's model as the
official openlineage-python client generates it from the JSON schema: every
event is rebuilt from the client's classes (whose validators check run ids,
event times and URIs), serialised by the client, and must equal what sluice
wrote — so no required key is missing, misspelt, mistyped or extra, and every
facet names the schema URL the client knows for it.

  python openlineage_check.py events.jsonl   → prints a JSON summary, exit 1 on a mismatch
"""
import json
import sys

from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated.column_lineage_dataset import ColumnLineageDatasetFacet, Fields, InputField
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields
from openlineage.client.serde import Serde


def schema(f):
    return SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=x["name"], type=x["type"]) for x in f["fields"]])


def lineage(f):
    return ColumnLineageDatasetFacet(
        fields={
            col: Fields(inputFields=[InputField(namespace=i["namespace"], name=i["name"], field=i["field"]) for i in v["inputFields"]])
            for col, v in f["fields"].items()
        }
    )


def dataset(cls, d):
    makers = {"schema": schema, "columnLineage": lineage}
    facets = {k: makers[k](v) for k, v in d.get("facets", {}).items()}
    return cls(namespace=d["namespace"], name=d["name"], facets=facets)


def rebuild(e):
    run_facets = {}
    for k, v in e["run"].get("facets", {}).items():
        assert k == "errorMessage", f"unknown run facet {k}"
        run_facets[k] = ErrorMessageRunFacet(message=v["message"], programmingLanguage=v["programmingLanguage"])
    return RunEvent(
        eventType=RunState(e["eventType"]),
        eventTime=e["eventTime"],
        run=Run(runId=e["run"]["runId"], facets=run_facets),
        job=Job(namespace=e["job"]["namespace"], name=e["job"]["name"]),
        producer=e["producer"],
        inputs=[dataset(InputDataset, d) for d in e.get("inputs", [])],
        outputs=[dataset(OutputDataset, d) for d in e.get("outputs", [])],
    )


def normalized(v):
    """Without facet `_producer`s (the emitter's own; the client stamps its
    own) and without empty optional lists and maps (the client writes its
    defaults, sluice leaves them out)."""
    if isinstance(v, dict):
        return {k: normalized(x) for k, x in v.items() if k != "_producer" and x not in ([], {})}
    if isinstance(v, list):
        return [normalized(x) for x in v]
    return v


def main():
    events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    problems = []
    for i, e in enumerate(events):
        try:
            rebuilt = Serde.to_dict(rebuild(e))
        except Exception as ex:  # a validator refused a value, or a key is missing
            problems.append(f"event {i} ({e.get('eventType')}): {type(ex).__name__}: {ex}")
            continue
        if normalized(rebuilt) != normalized(Serde.remove_nulls_and_enums(e)):
            problems.append(f"event {i}: differs from the spec's model:\n  sluice: {json.dumps(e, sort_keys=True)}\n  model:  {json.dumps(rebuilt, sort_keys=True)}")
    print(json.dumps({"events": [e["eventType"] for e in events], "problems": problems}))
    sys.exit(1 if problems or not events else 0)


if __name__ == "__main__":
    main()
