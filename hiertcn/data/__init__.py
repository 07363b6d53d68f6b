"""Reading, sessionizing, filtering, splitting and describing interaction logs.

A log file becomes a `RawLog` (`read_log`), is filtered to a fixed point (`filter_log`), becomes a
sessionized `EventLog` (`build_event_log`) and is split (`split_log`). Commands call
`add_data_arguments` and `load_dataset`, which run the whole chain.
"""

from hiertcn.data.filters import FilterConfig, FilterReport, FilterStep, filter_log
from hiertcn.data.log import EventLog, build_event_log
from hiertcn.data.options import (
    DataConfig,
    Dataset,
    add_data_arguments,
    data_config_from_args,
    load_dataset,
    load_dataset_from_config,
    prepare_log,
)
from hiertcn.data.readers import FORMATS, RawLog, ReaderConfig, read_log
from hiertcn.data.sessions import DEFAULT_SESSION_GAP
from hiertcn.data.splits import Split, SplitConfig, cold_start_split, split_log, warm_start_split
from hiertcn.data.stats import LogStats, compute_stats, format_stats_table
from hiertcn.data.synthetic import SyntheticConfig, generate_synthetic_log
from hiertcn.data.vocab import ItemVocab

__all__ = [
    "DEFAULT_SESSION_GAP",
    "FORMATS",
    "DataConfig",
    "Dataset",
    "EventLog",
    "FilterConfig",
    "FilterReport",
    "FilterStep",
    "ItemVocab",
    "LogStats",
    "RawLog",
    "ReaderConfig",
    "Split",
    "SplitConfig",
    "SyntheticConfig",
    "add_data_arguments",
    "build_event_log",
    "cold_start_split",
    "compute_stats",
    "data_config_from_args",
    "filter_log",
    "format_stats_table",
    "generate_synthetic_log",
    "load_dataset",
    "load_dataset_from_config",
    "prepare_log",
    "read_log",
    "split_log",
    "warm_start_split",
]
