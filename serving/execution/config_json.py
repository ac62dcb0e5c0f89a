"""A model config as Triton's HTTP endpoint shows it: every field by its proto name, the unset ones at
their defaults, and 64-bit integers as JSON numbers.

protobuf's JSON mapping writes int64 and uint64 fields as strings (``"dims": ["32", "32", "1"]``) and
leaves out fields at their defaults; Triton's ``/v2/models/{name}/config`` writes numbers and every
field (it turns the strings back into integers after the same conversion), and clients read it that
way (``config["max_batch_size"] > 0``, ``dims`` added up).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

_INT64 = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def config_json(message: Message) -> dict[str, Any]:
    """``message`` (a ``ModelConfig``) as Triton's HTTP endpoint answers it."""
    try:
        as_dict = json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    except TypeError:  # protobuf before 5.26 names it otherwise
        as_dict = json_format.MessageToDict(
            message, preserving_proto_field_name=True, including_default_value_fields=True
        )
    _numbers(message.DESCRIPTOR, as_dict)
    return as_dict


def _numbers(descriptor: Any, value: dict[str, Any]) -> None:
    """Turn the 64-bit integer fields of ``value`` (a message's dict) back into numbers, in place."""
    for field in descriptor.fields:
        if field.name not in value:
            continue
        item = value[field.name]
        if field.type in _INT64:
            value[field.name] = [int(v) for v in item] if _repeated(field) else int(item)
        elif field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                _map_values(field.message_type.fields_by_name["value"], item)
            elif _repeated(field):
                for entry in item:
                    _numbers(field.message_type, entry)
            else:
                _numbers(field.message_type, item)


def _map_values(field: Any, mapping: dict[str, Any]) -> None:
    for key, item in mapping.items():
        if field.type in _INT64:
            mapping[key] = int(item)
        elif field.message_type is not None:
            _numbers(field.message_type, item)


def _repeated(field: Any) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf 6; label, deprecated there, before
    return field.label == FieldDescriptor.LABEL_REPEATED if repeated is None else repeated
