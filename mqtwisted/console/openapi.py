"""The API's OpenAPI 3.1 document (``GET /v1/openapi.json``), and the check of request bodies
against it: a body the document refuses is answered 400 naming the field, before any handler
reads it.  The validator is openapi-schema-validator's (the python-openapi project, which also
makes openapi-core; the tests check every response with openapi-core and schemathesis).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from mqtwisted import __version__
from mqtwisted.console.http import ApiError
from mqtwisted.state.suppression import DEFAULT_CODE, DEFAULT_ENHANCED, DEFAULT_TEXT

QUEUE_NAME = "^[A-Za-z0-9._:-]{1,100}$"
MAX_INJECT = 10000
#: the longest pause or suppression with an end, in seconds (ten years; without one: until removed)
MAX_DURATION = 10 * 365 * 86400


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _op(summary: str, ok: dict[str, Any], *, body: str | None = None, params: list[Any] | None = None,
        public: bool = False, op_id: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _json(ok), "default": {"$ref": "#/components/responses/Error"}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    if params:
        op["parameters"] = params
    if public:
        op["security"] = []
    if op_id:
        op["operationId"] = op_id
    return op


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "pattern": QUEUE_NAME}}
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,100}$"}}
_PAGE = [
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 10**9, "default": 0}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}},
    {"name": "search", "in": "query", "schema": {"type": "string", "maxLength": 300},
     "description": "recipient or sender (a part of it), or a queue id"},
]
_OBJECT = {"type": "object"}
_QUEUED = {"type": "object", "required": ["queued"], "properties": {"queued": {"type": "array", "items": {
    "type": "object", "required": ["id", "queue", "recipient"],
    "properties": {"id": {"type": "string"}, "queue": {"type": "string"}, "recipient": {"type": "string"}}}}}}
_DONE = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}
#: what mqmta reads as an address: something, an @, a domain
_ADDRESS = {"type": "string", "pattern": "@[^@]+$", "maxLength": 998}
#: the MailerQ properties with a simple type; the others (dsn, smarthost, headers, queues, dkim,
#: results) are objects or lists that mqmta checks when it reads them (a bad one: 400, named)
_PROPERTIES = {
    "envelope": {"type": "string", "maxLength": 998},
    "nextattempt": {"type": ["number", "string"]},
    "maxdelivertime": {"type": ["number", "string"]},
    "maxattempts": {"type": "integer", "minimum": 0},
    "retries": {"type": "array", "items": {"type": "integer", "minimum": 0}},
    "security": {"enum": ["none", "optional", "opportunistic", "required", "verified"]},
    "keepmime": {"type": "boolean"},
    "binarymime": {"type": "boolean"},
    "smtputf8": {"type": "boolean"},
    "requiretls": {"type": "boolean"},
    "tags": {"type": "array"},
    "ips": {"type": "array", "items": {"type": "string"}},
    "pool": {"type": "string"},
}

_TEXT = {"type": ["string", "null"], "maxLength": 255}
#: an address or a domain (``@domain`` too); :func:`mqtwisted.state.suppression.normalize` decides
_PATTERN = {"type": "string", "maxLength": 320, "pattern": "^@?([^@\\s]+@)?([^@\\s]+\\.[^@\\s]+|localhost)$",
            "description": "user@example.com, or example.com for the whole domain"}
_UNTIL = {"type": ["number", "null"], "description": "when it ends, seconds since the epoch (null: when removed)"}
_DURATION = {"oneOf": [
    {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_DURATION},
    {"type": "string", "minLength": 1, "maxLength": 20},
    {"type": "null"},
], "description": "how long: seconds, or 60s, 5m, 2h, 1d (absent or null: until removed)"}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error", "status"],
        "properties": {"error": {"type": "string"}, "status": {"type": "integer"}, "field": {"type": "string"}},
    },
    "MailerQDocument": {
        "type": "object",
        "description": "A MailerQ JSON document for one recipient; properties mqmta does not know travel along.",
        "required": ["envelope", "recipient", "mime"],
        "properties": {**_PROPERTIES, "recipient": _ADDRESS, "mime": {"type": "string", "minLength": 1}},
        "not": {"required": ["recipients"]},
    },
    "Message": {
        "type": "object",
        "description": "One message for several recipients: one document is queued per recipient.",
        "required": ["envelope", "recipients", "mime"],
        "properties": {**_PROPERTIES, "recipients": {"type": "array", "minItems": 1, "maxItems": 1000, "items": _ADDRESS},
                       "mime": {"type": "string", "minLength": 1}},
        "not": {"required": ["recipient"]},
    },
    "InjectItem": {"oneOf": [_ref("MailerQDocument"), _ref("Message")]},
    "Inject": {"oneOf": [
        _ref("InjectItem"),
        {"type": "array", "minItems": 1, "maxItems": MAX_INJECT, "items": _ref("InjectItem")},
    ]},
    "Move": {"type": "object", "required": ["to"], "additionalProperties": False,
             "properties": {"to": {"type": "string", "pattern": QUEUE_NAME}}},
    "Page": {
        "type": "object", "required": ["queue", "total", "offset", "documents", "partial"],
        "properties": {
            "queue": {"type": "string"}, "total": {"type": "integer"}, "offset": {"type": "integer"},
            "partial": {"type": "boolean"},
            "documents": {"type": "array", "items": {
                "type": "object", "required": ["id", "document"],
                "properties": {"id": {"type": "string"}, "document": _OBJECT}}},
        },
    },
    "NewPause": {
        "type": "object", "additionalProperties": False,
        "description": "Hold deliveries that match: each of source, domain and tag left out matches anything.",
        "properties": {"source": {**_TEXT, "description": "a sending IP or a pool name"},
                       "domain": {**_TEXT, "description": "the recipients' domain"},
                       "tag": {**_TEXT, "description": "one of the messages' tags"},
                       "duration": _DURATION,
                       "reason": {"type": ["string", "null"], "maxLength": 500}},
    },
    "Pause": {
        "type": "object", "required": ["id", "source", "domain", "tag", "until", "reason", "created"],
        "properties": {"id": {"type": "string"}, "source": _TEXT, "domain": _TEXT, "tag": _TEXT,
                       "until": _UNTIL, "reason": {"type": "string"}, "created": {"type": "number"}},
    },
    "Pauses": {"type": "object", "required": ["pauses"],
               "properties": {"pauses": {"type": "array", "items": _ref("Pause")}}},
    "NewSuppression": {
        "type": "object", "required": ["pattern"], "additionalProperties": False,
        "description": "Never send to an address, or to any address of a domain.",
        "properties": {
            "pattern": _PATTERN,
            "code": {"type": "integer", "minimum": 500, "maximum": 599, "default": DEFAULT_CODE},
            "enhanced": {"type": "string", "pattern": "^5\\.[0-9]{1,3}\\.[0-9]{1,3}$", "default": DEFAULT_ENHANCED},
            "text": {"type": "string", "maxLength": 500, "default": DEFAULT_TEXT},
            "duration": _DURATION,
        },
    },
    "Suppression": {
        "type": "object", "required": ["pattern", "code", "enhanced", "text", "until", "created"],
        "properties": {"pattern": {"type": "string"}, "code": {"type": "integer"}, "enhanced": {"type": "string"},
                       "text": {"type": "string"}, "until": _UNTIL, "created": {"type": "number"}},
    },
    "Suppressions": {"type": "object", "required": ["suppressions"],
                     "properties": {"suppressions": {"type": "array", "items": _ref("Suppression")}}},
    "Queues": {"type": "object", "required": ["queues"], "properties": {"queues": {"type": "array", "items": {
        "type": "object", "required": ["name", "count"],
        "properties": {"name": {"type": "string"}, "count": {"type": "integer"}}}}}},
}

def _linked(op: dict[str, Any]) -> dict[str, Any]:
    """The first queued document's paths, as OpenAPI links (clients and schemathesis follow them)."""
    where = {"name": "$response.body#/queued/0/queue", "id": "$response.body#/queued/0/id"}
    op["responses"]["200"]["links"] = {
        name: {"operationId": name, "parameters": where}
        for name in ("getDocument", "retryDocument", "bounceDocument", "deleteDocument")
    }
    return op


def _unavailable(op: dict[str, Any]) -> dict[str, Any]:
    """The 503 of an inject, which a client should retry after the time it says."""
    op["responses"]["503"] = {
        **_json(_ref("Error"), "nothing was queued: the queue is down, the MTA is shutting down, or its data "
                "directory has less than queue-minfree free; try again after Retry-After seconds"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}},
    }
    return op


def _removable(op: dict[str, Any], remove: str, where: dict[str, str]) -> dict[str, Any]:
    """A link from what was added to its removal."""
    op["responses"]["200"]["links"] = {remove: {"operationId": remove, "parameters": where}}
    return op


PATHS: dict[str, Any] = {
    "/v1/openapi.json": {"get": _op("this document", _OBJECT, public=True)},
    "/v1/inject": {"post": _unavailable(_linked(_op(
        "queue documents on the outbox; answered once they are durable", _QUEUED, body="Inject")))},
    "/v1/queues": {"get": _op("the named queues and their sizes", _ref("Queues"))},
    "/v1/queues/{name}": {"get": _op("one page of a queue", _ref("Page"), params=[_NAME, *_PAGE])},
    "/v1/queues/{name}/{id}": {
        "get": _op("one document, as stored (with its mime)", _OBJECT, params=[_NAME, _ID], op_id="getDocument"),
        "delete": _op("delete one document", _DONE, params=[_NAME, _ID], op_id="deleteDocument"),
    },
    "/v1/queues/{name}/{id}/retry": {"post": _op("make a document due now", _DONE, params=[_NAME, _ID],
                                                 op_id="retryDocument")},
    "/v1/queues/{name}/{id}/bounce": {"post": _op(
        "fail a document for good: results, failure and a DSN to its sender", _QUEUED, params=[_NAME, _ID],
        op_id="bounceDocument")},
    "/v1/queues/{name}/{id}/move": {"post": _op(
        "move a document to another queue", _QUEUED, body="Move", params=[_NAME, _ID])},
    "/v1/pauses": {
        "get": _op("the pauses in force (as mqmta pause list)", _ref("Pauses")),
        "post": _removable(_op("add a pause (as mqmta pause add)", _ref("Pause"), body="NewPause"),
                           "removePause", {"id": "$response.body#/id"}),
    },
    "/v1/pauses/{id}": {"delete": _op("end a pause now", _DONE, op_id="removePause", params=[
        {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 100}}])},
    "/v1/suppressions": {
        "get": _op("the suppression list (as mqmta suppress list)", _ref("Suppressions")),
        "post": _removable(_op("suppress an address or a domain; replaces its entry (as mqmta suppress add)",
                               _ref("Suppression"), body="NewSuppression"),
                           "removeSuppression", {"pattern": "$response.body#/pattern"}),
    },
    "/v1/suppressions/{pattern}": {"delete": _op(
        "take an address or a domain off the list", _DONE, op_id="removeSuppression", params=[
            {"name": "pattern", "in": "path", "required": True, "schema": _PATTERN}])},
    "/v1/overview": {"get": _op("rates over the last 5 minutes and hour, queue sizes, connections", _OBJECT)},
    "/v1/destinations": {"get": _op("destinations by sending address: connections, rates, limits, replies",
                                    {"type": "object", "required": ["destinations"],
                                     "properties": {"destinations": {"type": "array", "items": _OBJECT}}})},
    "/v1/log": {"get": _op("the latest delivery attempts (the live tail is /console/events)",
                           {"type": "object", "required": ["attempts"],
                            "properties": {"attempts": {"type": "array", "items": _OBJECT}}})},
    "/v1/plugins": {"get": _op("plugins loaded and their hook calls", _OBJECT)},
    "/v1/config": {"get": _op("the effective configuration, secrets masked", _OBJECT)},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "mqmta REST API", "version": __version__,
                 "description": "MailerQ's REST paths where it has them; errors are JSON."},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "responses": {"Error": _json(_ref("Error"), "an error, as JSON")},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "mqmta_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}, {}],
    }


@functools.cache
def _validator(name: str) -> Any:
    from openapi_schema_validator import OAS31Validator

    return OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": SCHEMAS}})


_REQUIRED = re.compile(r"^'([^']+)' is a required property")


def check(name: str, value: Any, where: str = "") -> None:
    """ApiError 400 unless ``value`` is a ``name`` (a schema above); ``field`` points at it
    (below ``where``, the place of ``value`` in the body)."""
    from jsonschema.exceptions import best_match

    error = best_match(_validator(name).iter_errors(value))
    if error is None:
        return
    path = where + "".join(f"/{p}" for p in error.absolute_path)
    m = _REQUIRED.match(error.message)
    if m is not None:
        path += f"/{m.group(1)}"
    message = error.message if len(error.message) < 300 else error.message[:300] + "..."
    if error.validator == "pattern" and "description" in error.schema:
        message = f"expected {error.schema['description']}, got {error.instance[:100]!r}"
    raise ApiError(400, f"{path or 'body'}: {message}", field=path or "body")
