"""A fix for applyInPandasWithState on pyspark 4.1.1 with current pyarrow, applied in workers.

The Python worker reads each group's data range from a struct column (``startOffset``,
``numRows``) that Spark pads with null rows. pyarrow turns the int children of a struct with
null rows into floats (``StructArray.to_pandas``), and ``RecordBatch.slice`` then fails with
"'float' object cannot be interpreted as an integer" on any micro-batch holding a session with
more than one event. Reading that one struct column with ``to_pylist`` keeps the ints.

``install()`` runs when ``journey_assets.transforms.sessions`` is imported - in the driver and
in every Python worker that unpickles the state function, before the worker reads data - and
only if the pyarrow in use shows the conversion (so a fixed pyspark/pyarrow turns it off).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa


def _struct_ints_become_floats() -> bool:
    probe = pa.StructArray.from_arrays([pa.array([0, None], pa.int32())], names=["n"],
                                       mask=pa.array([False, True]))
    return isinstance(probe.to_pandas().iloc[0]["n"], float)


def install() -> None:
    from pyspark.sql.pandas import serializers

    cls = serializers.ApplyInPandasWithStateSerializer
    if getattr(cls, "_journey_state_offsets_fixed", False) or not _struct_ints_become_floats():
        return
    original = cls.arrow_to_pandas

    def arrow_to_pandas(self: Any, arrow_column: Any, idx: int, *args: Any, **kwargs: Any) -> Any:
        if (pa.types.is_struct(arrow_column.type)
                and arrow_column.type.get_field_index("startOffset") >= 0):
            return pd.Series(arrow_column.to_pylist(), dtype=object)
        return original(self, arrow_column, idx, *args, **kwargs)

    cls.arrow_to_pandas = arrow_to_pandas
    cls._journey_state_offsets_fixed = True
