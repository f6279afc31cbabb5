"""Small in-memory development scenarios of perturbation data (:func:`simulate_perturbation`),
drawn from the count model of :mod:`trvae.datasets._simulate`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from trvae._errors import TRVAEError
from trvae.datasets._simulate import (
    _condition_names,
    _names,
    _response_sizes,
    _simulate_cells,
    _simulator,
)
from trvae.pp import log_normalize


@dataclass(frozen=True)
class Scenario:
    """Settings of :func:`simulate_perturbation` (see there for their meaning).

    Examples
    --------
    >>> from trvae.datasets import Scenario, simulate_perturbation
    >>> adata = simulate_perturbation(Scenario(n_cell_types=2, cells_per_group=10), n_genes=20)
    >>> adata.shape
    (40, 20)
    """

    n_cell_types: int = 5
    n_conditions: int = 2
    group_sizes: tuple[int, ...] | None = None
    cells_per_group: int = 300
    shared_scale: float = 1.0
    specific_scale: float = 0.6
    opposite_fraction: float = 0.0
    responder_fraction: float = 1.0
    response_fraction: float = 0.1
    n_states: int = 0
    donor_sd: float = 0.3
    donor_response_sd: float = 0.3


#: Gene programmes, median library size and its log-scale SD of :func:`simulate_perturbation`.
N_FACTORS, LIBRARY_MEDIAN, LIBRARY_SD = 10, 1500.0, 0.4

#: Development scenarios of :func:`simulate_perturbation`, each stressing one failure mode of
#: perturbation prediction (the generalisation suite runs every one).
SCENARIOS: dict[str, Scenario] = {
    "shared": Scenario(shared_scale=1.0, specific_scale=0.0),
    "specific": Scenario(shared_scale=0.5, specific_scale=1.2, opposite_fraction=0.3),
    "three_conditions": Scenario(n_conditions=3),
    "unequal": Scenario(group_sizes=(900, 450, 250, 120, 40)),
    "variance": Scenario(responder_fraction=0.5),
    "donors": Scenario(n_states=3, shared_scale=0.6),
}


def simulate_perturbation(
    scenario: str | Scenario = "shared", n_genes: int = 500, seed: int = 0, **settings
) -> ad.AnnData:
    """Simulate a small perturbation experiment in memory, with the truth known.

    Cells of ``n_cell_types`` cell types under ``n_conditions`` conditions (the first is
    ``"control"``) are drawn from the negative-binomial model of :func:`synthetic_counts`: a
    perturbation adds to the log-frequencies a response shared by all types (scaled per type)
    and a type-specific one; ``opposite_fraction`` of the shared-response genes have the
    opposite sign in each type; with ``responder_fraction < 1`` only that fraction of the
    perturbed cells respond (the others look like controls), which changes the variance and
    makes the response bimodal. With ``n_states > 0`` the groups are donors instead of cell
    types (a perturbation screen across patients): every donor holds the same ``n_states``
    cell states in its own proportions (Dirichlet, concentration 2), shifted as a whole by a
    donor offset in programme space (SD ``donor_sd``), and the response belongs to the state
    (shared and state-specific parts as above) plus a small donor-specific part (SD
    ``donor_response_sd`` on as many genes as a specific response); a donor's mean response
    then depends on its mixture of states.

    Parameters
    ----------
    scenario
        A key of :data:`SCENARIOS` (``"shared"``, ``"specific"``, ``"three_conditions"``,
        ``"unequal"``, ``"variance"``, ``"donors"``) or a :class:`Scenario`.
    n_genes
        Number of genes.
    seed
        Seed of everything.
    **settings
        Fields of :class:`Scenario` that override the scenario's: ``n_cell_types`` (the
        number of groups: cell types, or donors with ``n_states > 0``), ``n_conditions``,
        ``group_sizes`` (cells per group and condition, one entry per group; default
        ``cells_per_group`` each), ``shared_scale`` and ``specific_scale`` (SD of the log-fold
        changes of the shared and type-specific response genes),
        ``opposite_fraction`` (shared-response genes whose sign flips, per type),
        ``responder_fraction`` (perturbed cells that respond), ``response_fraction`` (genes in
        the shared response; half as many in each specific one), ``n_states``, ``donor_sd``
        and ``donor_response_sd`` (donors as groups, above).

    Returns
    -------
    AnnData with log-normalised X (CSR, :func:`trvae.pp.log_normalize`), raw counts in
    ``layers["counts"]``, ``obs["condition"]``, ``obs["cell_type"]``, ``obs["responder"]``
    and ``uns["simulation"]`` (the settings and ``true_log_effect``, cell types x conditions x
    genes). With ``n_states > 0``: ``obs["donor"]`` (``donor0``, ...; the groups),
    ``obs["cell_type"]`` the state (``state0``, ...), and ``true_log_effect`` per donor and
    state, donors x states x conditions x genes.

    Examples
    --------
    >>> adata = simulate_perturbation("shared", n_genes=50, cells_per_group=20)
    >>> adata.shape, sorted(adata.obs["condition"].unique())
    ((200, 50), ['control', 'stimulated'])
    """
    if isinstance(scenario, str):
        if scenario not in SCENARIOS:
            raise TRVAEError(f"scenario must be one of {tuple(SCENARIOS)}, got {scenario!r}")
        name, scenario = scenario, SCENARIOS[scenario]
    else:
        name = "custom"
    unknown = sorted(set(settings) - {f.name for f in fields(Scenario)})
    if unknown:
        raise TRVAEError(f"unknown simulate_perturbation settings: {unknown}")
    sc = replace(scenario, **settings)
    sizes = _group_sizes(sc)
    n_types = len(sizes)
    if n_genes < 2 or sc.n_conditions < 2 or len(sizes) < 1 or sizes.min() < 1:
        raise TRVAEError("simulate_perturbation needs n_genes >= 2, n_conditions >= 2, cells >= 1")
    if sc.n_states < 0:
        raise TRVAEError(f"n_states must be >= 0, got {sc.n_states}")
    sim, groups, types, rng = _scenario_model(sc, n_genes, seed)
    conds = np.concatenate([np.repeat(np.arange(sc.n_conditions), s) for s in sizes])
    labels = {"cell_type": pd.Categorical.from_codes(groups, [f"type{t}" for t in range(n_types)])}
    if sc.n_states:
        states = types % sc.n_states
        labels = {
            "donor": pd.Categorical.from_codes(groups, [f"donor{d}" for d in range(n_types)]),
            "cell_type": pd.Categorical.from_codes(
                states, [f"state{s}" for s in range(sc.n_states)]
            ),
        }
    responder = (conds > 0) & (rng.random(len(conds)) < sc.responder_fraction)
    counts, _ = _simulate_cells(
        sim, types, np.where(responder, conds, 0), rng, LIBRARY_MEDIAN, LIBRARY_SD
    )
    counts = sparse.csr_matrix(counts.astype(np.float32))
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical.from_codes(conds, _condition_names(sc.n_conditions)),
            **labels,
            "responder": responder,
        },
        index=_names("cell", len(types)),
    )
    adata = ad.AnnData(
        X=log_normalize(counts), obs=obs, var=pd.DataFrame(index=_names("gene", n_genes))
    )
    adata.layers["counts"] = counts
    effect = sim["effect"]
    if sc.n_states:
        effect = effect.reshape(n_types, sc.n_states, *effect.shape[1:])
    adata.uns["simulation"] = {
        "scenario": name,
        "true_log_effect": effect.astype(np.float32),
        **{k: v for k, v in asdict(sc).items() if v is not None},
        "seed": int(seed),
    }
    return adata


def _group_sizes(sc: Scenario) -> np.ndarray:
    """Cells per group and condition of scenario ``sc``."""
    n_types = len(sc.group_sizes) if sc.group_sizes is not None else sc.n_cell_types
    return np.asarray(sc.group_sizes or (sc.cells_per_group,) * n_types, dtype=np.int64)


def _scenario_model(sc: Scenario, n_genes: int, seed: int):
    """The count model of :func:`simulate_perturbation` (with donors: of every (donor, state)
    pair), each cell's group and type (pair) codes, and the generator, positioned for the
    responders and the cells."""
    sizes = _group_sizes(sc)
    n_types = len(sizes)
    rng = np.random.default_rng([seed, 10])
    n_kinds = sc.n_states or n_types  # cell types, or the states every donor holds
    sim = _simulator(n_genes, sc.n_conditions, n_kinds, seed, N_FACTORS, sc.response_fraction)
    sim["effect"] = _effects(rng, n_genes, n_kinds, sc)
    groups = np.repeat(np.arange(n_types), sizes * sc.n_conditions)
    types = groups
    if sc.n_states:
        sim, types = _donor_design(rng, sim, groups, sc)
    return sim, groups, types, rng


def expected_log_means(
    adata: ad.AnnData, group: str, effect: np.ndarray, n_cells: int = 4000, seed: int = 0
) -> np.ndarray:
    """Expected mean log-normalised expression per gene of ``group``'s cells in a data set of
    :func:`simulate_perturbation`, when a perturbation adds ``effect`` to their log-frequencies
    (in the scenario's fraction of responders; zeros: the control).

    ``group``: a cell type (``"type0"``, ...; ``effect`` one value per gene) or, with donors, a
    donor (``"donor0"``, ...; ``effect`` states x genes, its cells' states drawn in the
    proportions of its control cells). Estimated from ``n_cells`` cells drawn from the data
    set's own model (seeded by ``seed``). With the average of the other groups'
    ``true_log_effect`` it gives what a method that knows every response but the held-out
    group's own could predict: the suite's identifiable ceiling (``trvae_benchmarks.suite``).

    Examples
    --------
    >>> import numpy as np
    >>> from trvae.datasets import expected_log_means, simulate_perturbation
    >>> adata = simulate_perturbation("shared", n_genes=20, cells_per_group=10)
    >>> effect = adata.uns["simulation"]["true_log_effect"][0, 1]  # type0, stimulated
    >>> expected_log_means(adata, "type0", effect, n_cells=200).shape
    (20,)
    """
    info = adata.uns.get("simulation") if hasattr(adata, "uns") else None
    if not isinstance(info, dict) or "true_log_effect" not in info:
        raise TRVAEError("expected_log_means needs a data set of simulate_perturbation")
    sc = Scenario(**{f.name: info[f.name] for f in fields(Scenario) if f.name in info})
    n_groups, n_genes, k = np.shape(info["true_log_effect"])[0], adata.n_vars, sc.n_states
    effect = np.asarray(effect, dtype=np.float64)
    shape = (k, n_genes) if k else (n_genes,)
    if effect.shape != shape:
        raise TRVAEError(f"effect must have shape {shape} (states x genes with donors), got "
                         f"{effect.shape}")  # fmt: skip
    names = [f"{'donor' if k else 'type'}{g}" for g in range(n_groups)]
    if group not in names:
        raise TRVAEError(f"unknown group {group!r}; known: {', '.join(names)}")
    code = names.index(group)
    sim, _, _, _ = _scenario_model(sc, n_genes, int(info["seed"]))
    rng = np.random.default_rng([seed, 11])
    if k:  # the donor's (donor, state) pairs, in the proportions of its control cells
        obs = adata.obs
        control = obs["condition"].astype(str) == str(obs["condition"].cat.categories[0])
        own = obs.loc[(obs["donor"].astype(str) == group) & control, "cell_type"].astype(str)
        shares = own.value_counts().reindex([f"state{s}" for s in range(k)], fill_value=0)
        types = code * k + rng.choice(k, n_cells, p=(shares / shares.sum()).to_numpy())
        pairs = code * k + np.arange(k)
    else:
        types, pairs, effect = np.full(n_cells, code), np.array([code]), effect[None]
    sim["effect"] = np.zeros((len(sim["centroids"]), 2, n_genes))
    sim["effect"][pairs, 1] = effect
    responder = rng.random(n_cells) < sc.responder_fraction
    counts, _ = _simulate_cells(sim, types, responder.astype(int), rng, LIBRARY_MEDIAN, LIBRARY_SD)
    return np.asarray(log_normalize(counts).mean(0), dtype=np.float64).ravel()


def _effects(rng: np.random.Generator, n_genes: int, n_types: int, sc: Scenario) -> np.ndarray:
    """Log-fold changes (types x conditions x genes) of :func:`simulate_perturbation`."""
    n_shared, n_specific = _response_sizes(sc.response_fraction, n_genes)
    effect = np.zeros((n_types, sc.n_conditions, n_genes))
    for c in range(1, sc.n_conditions):
        shared = np.zeros(n_genes)
        genes = rng.choice(n_genes, n_shared, replace=False)
        shared[genes] = rng.normal(0.0, sc.shared_scale, n_shared)
        for t in range(n_types):
            sign = np.ones(n_genes)
            sign[genes[rng.random(n_shared) < sc.opposite_fraction]] = -1.0
            specific = np.zeros(n_genes)
            specific[rng.choice(n_genes, n_specific, replace=False)] = rng.normal(
                0.0, sc.specific_scale, n_specific
            )
            effect[t, c] = rng.uniform(0.7, 1.3) * sign * shared + specific
    return effect


def _donor_design(
    rng: np.random.Generator, sim: dict, donors: np.ndarray, sc: Scenario
) -> tuple[dict, np.ndarray]:
    """Donors holding ``sc.n_states`` shared states: the simulator of every (donor, state)
    pair (index ``donor * n_states + state``) and each cell's pair, drawn from its donor's
    proportions."""
    n_donors, k = int(donors.max()) + 1, sc.n_states
    n_conditions, n_genes = sim["effect"].shape[1:]
    offset = rng.normal(0.0, sc.donor_sd, (n_donors, sim["centroids"].shape[1]))
    n_own = _response_sizes(sc.response_fraction, n_genes)[1]
    own = np.zeros((n_donors, n_conditions, n_genes))
    for d in range(n_donors):
        for c in range(1, n_conditions):
            own[d, c, rng.choice(n_genes, n_own, replace=False)] = rng.normal(
                0.0, sc.donor_response_sd, n_own
            )
    pairs = dict(sim)
    pairs["centroids"] = (sim["centroids"][None] + offset[:, None]).reshape(n_donors * k, -1)
    pairs["effect"] = (sim["effect"][None] + own[:, None]).reshape(n_donors * k, n_conditions, -1)
    cumulative = np.cumsum(rng.dirichlet(np.full(k, 2.0), n_donors), axis=1)
    states = (rng.random(len(donors))[:, None] > cumulative[donors, :-1]).sum(axis=1)
    return pairs, donors * k + states
