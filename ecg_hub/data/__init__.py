"""ECG signal I/O and datasets.

Every dataset is a Hugging Face ``datasets.Dataset`` (Arrow, memory-mapped after ``save_to_disk``)
with the columns ``signal`` (float32, ``(leads, samples)``, mV), ``sampling_rate`` (Hz), ``leads``,
``record_id``, ``patient_id``, label columns (``Sequence(ClassLabel)`` of positive class indices),
``report`` where the source has one, and ``split`` (train/validation/test) / ``fold`` where present.
``masked_leads`` (lead names, in ``leads`` order) and ``masked_lead_reasons`` (``"flat"``,
``"clipped"`` or ``"absent"``, one per masked lead) list the leads that are unusable and stored as
zero rows: the record is kept and models receive them as missing leads (``lead_mask`` 0); both are
empty for a clean record (``--drop-records-with-bad-leads`` skips such records instead). Sources
read from files have them; synthetic data does not.
Text corpora for the cardiology text model (:func:`prepare_text_corpus`, ``ecg-hub text prepare``)
are datasets of report and description chunks instead.

Sources: :func:`prepare_ptbxl`, :func:`prepare_cinc` (PhysioNet/CinC 2020-21 WFDB + SPH HDF5),
:func:`prepare_code15`, :func:`prepare_folder` (your WFDB records + a labels CSV),
:func:`make_synthetic_dataset` / :func:`prepare_synthetic` (the embedded default). The command line
equivalent is ``ecg-hub data prepare {ptbxl,cinc,code15,folder,synthetic} ... --out DIR``.
"""

from .builder import (
    SUMMARY_FILE,
    PrepareResult,
    PrepareSummary,
    SkippedRecord,
    build_dataset,
    load_summary,
    record_features,
    signal_feature,
)
from .cinc import prepare_cinc, read_snomed_names
from .code15 import prepare_code15
from .folder import prepare_folder
from .labels import (
    SPLIT_NAMES,
    assign_random_split,
    label_columns,
    label_counts,
    label_feature,
    label_names,
    multi_hot,
)
from .plot import plot_ecg
from .ptbxl import MERL_TASKS, PTBXL_LABEL_SETS, aggregate_scp_codes, prepare_ptbxl, ptbxl_class_names
from .records import (
    EcgRecord,
    SignalChecks,
    make_record,
    read_code15_mat,
    read_hdf5_record,
    read_record,
    read_wfdb_record,
    validate_signal,
)
from .splits import dataset_split, split_dataset
from .synthetic import RHYTHMS, SyntheticEcg, make_synthetic_dataset, prepare_synthetic, synthesize_ecg
from .text_corpus import load_text_corpus, load_text_summary, prepare_text_corpus

__all__ = [
    "MERL_TASKS",
    "PTBXL_LABEL_SETS",
    "RHYTHMS",
    "SPLIT_NAMES",
    "SUMMARY_FILE",
    "EcgRecord",
    "PrepareResult",
    "PrepareSummary",
    "SignalChecks",
    "SkippedRecord",
    "SyntheticEcg",
    "aggregate_scp_codes",
    "assign_random_split",
    "build_dataset",
    "dataset_split",
    "label_columns",
    "label_counts",
    "label_feature",
    "label_names",
    "load_summary",
    "load_text_corpus",
    "load_text_summary",
    "make_record",
    "make_synthetic_dataset",
    "multi_hot",
    "plot_ecg",
    "prepare_cinc",
    "prepare_code15",
    "prepare_folder",
    "prepare_ptbxl",
    "prepare_synthetic",
    "prepare_text_corpus",
    "ptbxl_class_names",
    "read_code15_mat",
    "read_hdf5_record",
    "read_record",
    "read_snomed_names",
    "read_wfdb_record",
    "record_features",
    "signal_feature",
    "split_dataset",
    "synthesize_ecg",
    "validate_signal",
]
