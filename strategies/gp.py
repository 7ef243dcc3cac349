"""Strongly typed genetic programming with DEAP over the DSL's primitives.

The primitive set is derived from the search space (which derives from the primitives
table, ARCHITECTURE.md rule 6): operand tokens are typed terminals, unary tokens are
primitives ``operand -> arg`` and binary tokens primitives ``arg, arg -> group``. The
types also encode the token grammar's chain of groups (paper section 3.1), so that
*every* tree is a rule of exactly the space's depth:

==========  ==============================================================
type        trees of that type
==========  ==============================================================
``Operand`` a base operand token (terminal: ``g``, ``m``, ``1e-3*w`` ...)
``Arg``     ``u(Operand)`` for every unary token ``u`` (``id`` included)
``Group1``  ``b(Arg, Arg)``: the first group
``OutK``    ``u(GroupK)``: the output of group K through a unary function
``GroupK``  ``b(OutK-1, Arg)`` or ``b(Arg, OutK-1)``: group K reads the latest
            output (the ``reuse_output`` constraint) and one base operand
==========  ==============================================================

The root type is ``Group<depth>``; its binary primitives exclude ``add`` when the space
has ``no_final_add``.  Depth is thus limited to the space's depth by construction (tree
height is exactly ``2 * depth``; ``gp.staticLimit`` on mate and mutate guards it too).
What types cannot express is repaired: a first group whose two operands are equal
(``distinct_operands``) gets its second operand re-drawn.  Every tree is finally checked
with ``check_tokens``; a tree that still fails is rejected and replaced by a new random
one, so only valid rules of the space are returned.  Not covered: groups that read an
output older than the latest one as their second operand (possible at depth >= 3).

Evolution is the classic generational GP of DEAP's ``eaSimple``, written as an ask/tell
loop (``eaSimple`` has no budget stop and re-evaluates duplicates): tournament
selection, ``cxOnePoint`` (subtree crossover between equal types), ``mutUniform`` (a
random subtree regenerated), elitism of the best individual.  Offspring whose canonical
key was already evaluated get their known reward without being asked; only new keys
are proposed.

DEAP draws from Python's global ``random`` module; every DEAP call here runs inside
:func:`_seeded`, which swaps in this strategy's own ``random.Random(seed)`` state and
restores the global state afterwards, so runs are deterministic and leave no trace.
``creator`` classes are created once, at module level, under searchlab-specific names
(picklable, never mutated per run).
"""

from __future__ import annotations

import contextlib
import operator
import random
from typing import Any, Iterator, Sequence

from deap import algorithms, base, creator, gp, tools

from searchlab.dsl import Rule, Space, TokenGrammarError, check_tokens
from searchlab.dsl.primitives import MAX_DEPTH, OUTPUTS
from searchlab.result import Result
from searchlab.strategy import STRATEGIES, Strategy


# --- types ---------------------------------------------------------------------------
class _TypeMeta(type):
    """GP type tags hash by a fixed number instead of their id: DEAP's ``cxOnePoint``
    picks a crossover type from a ``set`` of types, whose order would otherwise change
    from process to process and break determinism for a seed."""

    _order: int

    def __hash__(cls) -> int:
        return cls._order

    def __eq__(cls, other: object) -> bool:
        return cls is other


def _make_type(name: str, order: int) -> type:
    t = _TypeMeta(name, (), {"_order": order, "__module__": __name__})
    globals()[name] = t        # module level: picklable
    return t


Operand = _make_type("Operand", 0)
Arg = _make_type("Arg", 1)
GROUP_TYPES = tuple(_make_type(f"Group{k}", 1 + k) for k in range(1, MAX_DEPTH + 1))
OUT_TYPES = tuple(_make_type(f"Out{k}", 1 + MAX_DEPTH + k) for k in range(1, MAX_DEPTH))

# --- creator classes: once, module level, searchlab-specific names -------------------
if not hasattr(creator, "SearchlabGPFitness"):
    creator.create("SearchlabGPFitness", base.Fitness, weights=(1.0,))
if not hasattr(creator, "SearchlabGPIndividual"):
    creator.create("SearchlabGPIndividual", gp.PrimitiveTree,
                   fitness=creator.SearchlabGPFitness)


def _never_called(*args: Any) -> None:  # trees are converted to Rules, never compiled
    raise NotImplementedError


def build_pset(space: Space) -> gp.PrimitiveSetTyped:
    """The typed primitive set of a space (see the module docstring for the types).

    Primitive names: unary ``u`` on an operand is ``u``; on the output of group K it is
    ``u@oK``; binary ``b`` of group 1 is ``b@1``; of group K >= 2 ``b@KL`` (latest output
    on the left) or ``b@KR`` (on the right).
    """
    depth = space.depth
    pset = gp.PrimitiveSetTyped(f"searchlab_{space.name}_d{depth}", [], GROUP_TYPES[depth - 1])
    for op in space.operands:
        pset.addTerminal(op, Operand, name=op)
    for u in space.unary:
        pset.addPrimitive(_never_called, [Operand], Arg, name=u)
        for k in range(1, depth):
            pset.addPrimitive(_never_called, [GROUP_TYPES[k - 1]], OUT_TYPES[k - 1],
                              name=f"{u}@o{k}")
    for k in range(1, depth + 1):
        binary = [b for b in space.binary
                  if not (k == depth and space.no_final_add and b == "add")]
        for b in binary:
            if k == 1:
                pset.addPrimitive(_never_called, [Arg, Arg], GROUP_TYPES[0], name=f"{b}@1")
            else:
                out = OUT_TYPES[k - 2]
                pset.addPrimitive(_never_called, [out, Arg], GROUP_TYPES[k - 1], name=f"{b}@{k}L")
                pset.addPrimitive(_never_called, [Arg, out], GROUP_TYPES[k - 1], name=f"{b}@{k}R")
    return pset


def generate(pset: gp.PrimitiveSetTyped, type_: type | None = None) -> list[Any]:
    """A random tree of ``type_`` (prefix list).  Uses the global ``random`` module, so
    call it inside :func:`_seeded`.  Each type has either primitives or terminals, so
    the shape is fixed by the types (no ``IndexError`` trap of ``genFull``)."""
    type_ = pset.ret if type_ is None else type_
    prims = pset.primitives.get(type_) or []
    if prims:
        prim = random.choice(prims)
        out = [prim]
        for arg in prim.args:
            out.extend(generate(pset, arg))
        return out
    return [random.choice(pset.terminals[type_])]


def tree_tokens(tree: Sequence[Any]) -> list[str]:
    """Token string of a tree built from :func:`build_pset` (prefix-list traversal)."""
    groups: list[tuple[str, ...]] = []

    def unary_arg(i: int) -> tuple[str, str, int]:
        """A node of type Arg or OutK: returns (operand, unary, next index)."""
        node = tree[i]
        u = node.name.split("@")[0]
        child = tree[i + 1]
        if isinstance(child, gp.Terminal):
            return str(child.value), u, i + 2
        k, nxt = group(i + 1)
        return OUTPUTS[k - 1], u, nxt

    def group(i: int) -> tuple[int, int]:
        """A node of type GroupK: emits its groups, returns (K, next index)."""
        node = tree[i]
        b = node.name.split("@")[0]
        o1, u1, j = unary_arg(i + 1)
        o2, u2, j = unary_arg(j)
        groups.append((o1, o2, u1, u2, b))
        return len(groups), j

    _, end = group(0)
    assert end == len(tree)
    return [t for g in groups for t in g]


@contextlib.contextmanager
def _seeded(rng: random.Random) -> Iterator[None]:
    """Run DEAP (which uses the global ``random``) on ``rng``'s state, then restore."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


@STRATEGIES.register("gp")
class GeneticProgramming(Strategy):
    """Generational strongly typed GP (DEAP) as an ask/tell strategy.

    Options:
        population: individuals per generation.
        tournament: tournament size of ``selTournament``.
        cxpb: probability that a pair is crossed over (``cxOnePoint``).
        mutpb: probability that an individual is mutated (``mutUniform``).
        elite: best individuals copied unchanged into the next generation.
        retries: re-draws allowed to make an initial individual's key new.
    """

    def __init__(self, space: Space, seed: int, population: int = 30, tournament: int = 3,
                 cxpb: float = 0.5, mutpb: float = 0.4, elite: int = 1, retries: int = 20,
                 **options: Any) -> None:
        if options:
            raise TypeError(f"unknown gp options {sorted(options)}")
        if population < 2:
            raise ValueError("population must be >= 2")
        super().__init__(space, seed)
        self.population_size = population
        self.cxpb, self.mutpb, self.elite, self.retries = cxpb, mutpb, elite, retries
        self.rng = random.Random(seed)
        self.pset = build_pset(space)
        self.max_height = 2 * space.depth
        tb = base.Toolbox()
        tb.register("expr", generate, pset=self.pset)
        tb.register("select", tools.selTournament, tournsize=tournament)
        tb.register("mate", gp.cxOnePoint)
        tb.register("mutate", gp.mutUniform, expr=generate, pset=self.pset)
        limit = gp.staticLimit(key=operator.attrgetter("height"), max_value=self.max_height)
        tb.decorate("mate", limit)
        tb.decorate("mutate", limit)
        self.toolbox = tb
        self.memory: dict[str, float] = {}       # key -> reward of every told result
        self.population: list[Any] = []          # the last complete generation
        self.offspring: list[Any] = []           # generation being evaluated
        self.queue: list[Rule] = []              # rules of new keys to propose
        self.asked: set[str] = set()             # keys proposed, not yet told
        self.generation = 0

    # --- trees <-> rules -------------------------------------------------------------
    def _new_individual(self) -> Any:
        return creator.SearchlabGPIndividual(generate(self.pset))

    def _repair(self, ind: Any) -> tuple[Any, Rule]:
        """Make ``ind`` a valid rule of the space (repair, else replace); return both."""
        for _ in range(100):
            if self.space.distinct_operands:
                self._distinct_first_group(ind)
            try:
                tokens = tree_tokens(ind)
                check_tokens(self.space, tokens)
                return ind, Rule.from_tokens(tokens)
            except (TokenGrammarError, AssertionError):
                ind[:] = generate(self.pset)   # reject: a fresh random tree
                del ind.fitness.values
        raise RuntimeError("could not build a valid rule")  # pragma: no cover

    def _distinct_first_group(self, ind: Any) -> None:
        # the first group is the innermost Group1 node: b@1, u, op1, u, op2
        for i, node in enumerate(ind):
            if isinstance(node, gp.Primitive) and node.ret is GROUP_TYPES[0]:
                a, b = ind[i + 2], ind[i + 4]
                if a.value == b.value:
                    others = [t for t in self.pset.terminals[Operand] if t.value != a.value]
                    if others:
                        ind[i + 4] = random.choice(others)
                        if ind.fitness.valid:
                            del ind.fitness.values
                return

    # --- the generation loop (ask/tell) ----------------------------------------------
    def _score(self, ind: Any, rule: Rule) -> None:
        """Known key -> fitness now; new key -> queue it (once)."""
        key = rule.key
        if key in self.memory:
            ind.fitness.values = (self.memory[key],)
        elif key not in self.asked:
            self.asked.add(key)
            self.queue.append(rule)

    def _initial(self) -> None:
        for _ in range(self.population_size):
            for _ in range(self.retries):
                ind, rule = self._repair(self._new_individual())
                if rule.key not in self.memory and rule.key not in self.asked:
                    break
            self.offspring.append(ind)
            self._score(ind, rule)

    def _breed(self) -> None:
        pop = self.population
        offspring = algorithms.varAnd(self.toolbox.select(pop, len(pop)), self.toolbox,
                                      self.cxpb, self.mutpb)
        best = sorted(pop, key=lambda ind: ind.fitness.values[0], reverse=True)[: self.elite]
        offspring[: len(best)] = [self.toolbox.clone(ind) for ind in best]
        self.offspring = []
        for ind in offspring:
            ind, rule = self._repair(ind)
            self.offspring.append(ind)
            if not ind.fitness.valid:
                self._score(ind, rule)
        self.generation += 1

    def _advance(self) -> None:
        """Finish the current generation if every fitness is known; breed until some
        new key needs evaluating (or inject random immigrants if breeding stagnates)."""
        for _ in range(50):
            if self.queue or self.asked:
                return
            if self.offspring:
                for ind in self.offspring:
                    if not ind.fitness.valid:
                        ind.fitness.values = (self.memory[Rule.from_tokens(tree_tokens(ind)).key],)
                self.population, self.offspring = self.offspring, []
            if not self.population:
                self._initial()
            else:
                self._breed()
        # stagnation: every offspring of 50 generations was already evaluated
        for ind in self.offspring[len(self.offspring) // 2:]:
            ind[:] = generate(self.pset)
            if ind.fitness.valid:
                del ind.fitness.values
            ind, rule = self._repair(ind)
            self._score(ind, rule)

    @property
    def warmup(self) -> int:
        return self.population_size      # the first generation is random

    def ask(self, n: int) -> list[Rule]:
        with _seeded(self.rng):
            self._advance()
        out, self.queue = self.queue[:n], self.queue[n:]
        return out

    def tell(self, results: Sequence[Result]) -> None:
        for res in results:
            self.memory[res.key] = float(res.reward)
            self.asked.discard(res.key)
        for ind in self.offspring:     # fitness of the individuals waiting on these keys
            if not ind.fitness.valid:
                key = Rule.from_tokens(tree_tokens(ind)).key
                if key in self.memory:
                    ind.fitness.values = (self.memory[key],)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (checkpoint/resume): the RNG, the
        memory of rewards, the population, the generation being evaluated, the queue."""
        import copy

        return {"memory": dict(self.memory), "generation": self.generation,
                "rng": self.rng.getstate(), "population": copy.deepcopy(self.population),
                "offspring": copy.deepcopy(self.offspring),
                "queue": [r.text for r in self.queue], "asked": sorted(self.asked)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import copy

        from searchlab.dsl import parse

        self.memory = dict(state["memory"])
        self.generation = int(state["generation"])
        self.rng.setstate(state["rng"])
        self.population = copy.deepcopy(state["population"])
        self.offspring = copy.deepcopy(state["offspring"])
        self.queue = [parse(t) for t in state["queue"]]
        self.asked = set(state["asked"])
