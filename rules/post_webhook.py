"""POST JSON to a `webhook` connection (ad-platform audiences, any outside hook).

    do:
      - post_webhook:
          connection: ads-audiences                  # its base_url is the only address reachable
          path: /retargeting/add                     # optional, under base_url; a template
          body:                                      # any YAML; every string in it is a template
            audience: brief-pending
            phone: "{{ entity.fields['Телефон'] }}"
            deal: "{{ entity.id }}"

A rule cannot name a URL: `path` with a scheme, a host or `..` is refused when it runs.
"""
from marshmallow import Schema, fields

NAME = "post_webhook"


class Options(Schema):
    connection = fields.String(required=True, metadata={"expected": "a webhook connection name"})
    path = fields.String(load_default=None, metadata={"expected": "a path under the connection's base_url"})
    body = fields.Raw(required=True, metadata={"expected": "the JSON body: a mapping (strings are templates)"})


def plan(ctx, options: dict) -> list:
    path = (options["path"] or "").strip()
    if "://" in path or path.startswith("//"):
        raise ValueError(f"path: expected a path under the connection's base_url, found an address {path!r}")
    return [ctx.step("post_webhook", options["connection"], body=options["body"], path=path or None)]
