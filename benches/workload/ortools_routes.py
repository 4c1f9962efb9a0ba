"""OR-Tools' answer to the routing bench's instance (benches/routes.rs): per region, a capacitated
VRP with a shift limit and optional stops, the same integer metre matrix, service times, crews,
stops per crew and shift as vendflow's planner gets. Prints JSON: per region the metres driven,
the stops visited (urgent ones too) and the seconds taken.

Usage: python ortools_routes.py INSTANCE.json SECONDS_PER_REGION
"""

import json
import sys
import time

from ortools.constraint_solver import pywrapcp, routing_enums_pb2


def solve(region, seconds):
    n = len(region["distances"])
    dist = region["distances"]
    secs = region["durations"]
    service = region["service"]
    urgent = region["urgent"]
    crews = region["crews"]
    manager = pywrapcp.RoutingIndexManager(n, crews, 0)
    routing = pywrapcp.RoutingModel(manager)

    def distance(i, j):
        return dist[manager.IndexToNode(i)][manager.IndexToNode(j)]

    arc = routing.RegisterTransitCallback(distance)
    routing.SetArcCostEvaluatorOfAllVehicles(arc)

    def demand(i):
        return 0 if manager.IndexToNode(i) == 0 else 1

    count = routing.RegisterUnaryTransitCallback(demand)
    routing.AddDimensionWithVehicleCapacity(count, 0, [region["stops_per_crew"]] * crews, True, "stops")

    def travel(i, j):
        a, b = manager.IndexToNode(i), manager.IndexToNode(j)
        return secs[a][b] + service[a]

    time_cb = routing.RegisterTransitCallback(travel)
    routing.AddDimension(time_cb, 0, region["shift_secs"], True, "time")

    # Stops may be left out, an urgent one at a hundred times the cost of an optional one, both
    # far above any route's length (as vendflow's objective: stops first, then metres).
    for node in range(1, n):
        penalty = 100_000_000 if urgent[node] else 1_000_000
        routing.AddDisjunction([manager.NodeToIndex(node)], penalty)

    params = pywrapcp.DefaultRoutingSearchParameters()
    params.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.PATH_CHEAPEST_ARC
    params.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    params.time_limit.seconds = seconds
    started = time.time()
    solution = routing.SolveWithParameters(params)
    took = time.time() - started
    if solution is None:
        return {"region": region["region"], "metres": None, "visited": 0, "urgent_visited": 0, "seconds": took}
    metres, visited, urgent_visited = 0, 0, 0
    for v in range(crews):
        i = routing.Start(v)
        while not routing.IsEnd(i):
            j = solution.Value(routing.NextVar(i))
            metres += distance(i, j)
            node = manager.IndexToNode(j)
            if not routing.IsEnd(j) and node != 0:
                visited += 1
                urgent_visited += 1 if urgent[node] else 0
            i = j
    return {"region": region["region"], "metres": metres, "visited": visited,
            "urgent_visited": urgent_visited, "seconds": took}


def main():
    instance = json.load(open(sys.argv[1]))
    seconds = int(sys.argv[2])
    print(json.dumps([solve(r, seconds) for r in instance["regions"]]))


if __name__ == "__main__":
    main()
